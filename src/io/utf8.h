#pragma once

#include <cstddef>
#include <string_view>

namespace elephant {

// Strict UTF-8 validation: rejects overlong encodings, UTF-16 surrogates (U+D800..U+DFFF), code points
// above U+10FFFF, stray continuation bytes and truncated sequences. On failure, *error_offset (when
// given) receives the byte offset of the first invalid sequence.
bool is_valid_utf8(std::string_view text, size_t* error_offset = nullptr);

}  // namespace elephant
