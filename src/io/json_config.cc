#include "io/json_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "elephant/error.h"

namespace elephant {

namespace {

// nlohmann prefixes its messages with "[json.exception.parse_error.101] "; the rest says where and why.
std::string strip_exception_id(const std::string& message) {
  if (!message.empty() && message[0] == '[') {
    const size_t end = message.find("] ");
    if (end != std::string::npos) return message.substr(end + 2);
  }
  return message;
}

nlohmann::json parse_object(const std::string& text, const std::string& source_name) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& error) {
    throw ModelError(source_name + ": invalid JSON: " + strip_exception_id(error.what()));
  }
  if (!json.is_object()) throw ModelError(source_name + ": expected a JSON object at the top level");
  return json;
}

}  // namespace

JsonConfig JsonConfig::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelError(path + ": cannot open (missing or unreadable)");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ModelError(path + ": read error");
  return JsonConfig(path, parse_object(text.str(), path));
}

JsonConfig JsonConfig::parse(const std::string& text, const std::string& source_name) {
  return JsonConfig(source_name, parse_object(text, source_name));
}

bool JsonConfig::has(const std::string& key) const { return json_.contains(key); }

bool JsonConfig::is_null(const std::string& key) const {
  const auto it = json_.find(key);
  return it != json_.end() && it->is_null();
}

bool JsonConfig::present(const std::string& key) const {
  const auto it = json_.find(key);
  return it != json_.end() && !it->is_null();
}

const nlohmann::json& JsonConfig::required(const std::string& key) const {
  const auto it = json_.find(key);
  if (it == json_.end()) throw ModelError(path_ + ": missing key " + key);
  return *it;
}

void JsonConfig::type_error(const std::string& key, const char* expected, const nlohmann::json& value) const {
  throw ModelError(path_ + ": " + key + " must be " + expected + ", got " + value.dump());
}

int JsonConfig::to_int(const std::string& key, const nlohmann::json& value, const char* expected) const {
  constexpr auto min_int = static_cast<double>(std::numeric_limits<int>::min());
  constexpr auto max_int = static_cast<double>(std::numeric_limits<int>::max());
  if (value.is_number_unsigned()) {
    const auto number = value.get<uint64_t>();
    if (number > static_cast<uint64_t>(std::numeric_limits<int>::max())) type_error(key, expected, value);
    return static_cast<int>(number);
  }
  if (value.is_number_integer()) {
    const auto number = value.get<int64_t>();
    if (number < std::numeric_limits<int>::min() || number > std::numeric_limits<int>::max())
      type_error(key, expected, value);
    return static_cast<int>(number);
  }
  if (value.is_number_float()) {
    const double number = value.get<double>();
    if (!std::isfinite(number) || std::floor(number) != number || number < min_int || number > max_int)
      type_error(key, expected, value);
    return static_cast<int>(number);
  }
  type_error(key, expected, value);
}

int JsonConfig::get_int(const std::string& key) const { return to_int(key, required(key), "an integer"); }

int JsonConfig::get_int(const std::string& key, int default_value) const {
  return present(key) ? get_int(key) : default_value;
}

int JsonConfig::get_positive_int(const std::string& key) const {
  const nlohmann::json& value = required(key);
  const int number = to_int(key, value, "a positive integer");
  if (number <= 0) type_error(key, "a positive integer", value);
  return number;
}

int JsonConfig::get_positive_int(const std::string& key, int default_value) const {
  return present(key) ? get_positive_int(key) : default_value;
}

int JsonConfig::get_non_negative_int(const std::string& key) const {
  const nlohmann::json& value = required(key);
  const int number = to_int(key, value, "a non-negative integer");
  if (number < 0) type_error(key, "a non-negative integer", value);
  return number;
}

int JsonConfig::get_non_negative_int(const std::string& key, int default_value) const {
  return present(key) ? get_non_negative_int(key) : default_value;
}

float JsonConfig::get_float(const std::string& key) const {
  const nlohmann::json& value = required(key);
  if (!value.is_number()) type_error(key, "a number", value);
  const auto number = static_cast<float>(value.get<double>());
  if (!std::isfinite(number)) type_error(key, "a finite float", value);
  return number;
}

float JsonConfig::get_float(const std::string& key, float default_value) const {
  return present(key) ? get_float(key) : default_value;
}

bool JsonConfig::get_bool(const std::string& key) const {
  const nlohmann::json& value = required(key);
  if (!value.is_boolean()) type_error(key, "true or false", value);
  return value.get<bool>();
}

bool JsonConfig::get_bool(const std::string& key, bool default_value) const {
  return present(key) ? get_bool(key) : default_value;
}

std::string JsonConfig::get_string(const std::string& key) const {
  const nlohmann::json& value = required(key);
  if (!value.is_string()) type_error(key, "a string", value);
  return value.get<std::string>();
}

std::string JsonConfig::get_string(const std::string& key, const std::string& default_value) const {
  return present(key) ? get_string(key) : default_value;
}

std::vector<int> JsonConfig::get_int_list_or_int(const std::string& key) const {
  const nlohmann::json& value = required(key);
  constexpr const char* expected = "an integer or a list of integers";
  if (!value.is_array()) return {to_int(key, value, expected)};
  std::vector<int> numbers;
  numbers.reserve(value.size());
  for (const auto& element : value) {
    if (!element.is_number()) type_error(key, expected, value);
    numbers.push_back(to_int(key, element, expected));
  }
  return numbers;
}

std::vector<int> JsonConfig::get_int_list_or_int(const std::string& key, const std::vector<int>& default_value) const {
  return present(key) ? get_int_list_or_int(key) : default_value;
}

JsonConfig JsonConfig::get_object(const std::string& key) const {
  const nlohmann::json& value = required(key);
  if (!value.is_object()) type_error(key, "an object", value);
  return JsonConfig(path_ + ": " + key, value);
}

}  // namespace elephant
