#pragma once

#include <stdexcept>
#include <string>

namespace elephant {

// Every failure the library reports is one of these. The CLI maps UsageError to exit code 2
// and the others to exit code 1; messages name the file, tensor or line at fault.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A model directory that cannot be loaded: missing or corrupt files, wrong shapes, unknown architecture.
class ModelError : public Error {
 public:
  using Error::Error;
};

// Text or ids given to translate that cannot be processed (invalid UTF-8, unknown language tag).
class InputError : public Error {
 public:
  using Error::Error;
};

// Invalid options (bad flag values, an unavailable device).
class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace elephant
