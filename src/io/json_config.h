#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace elephant {

// A JSON object read from a file (config.json, generation_config.json), with typed getters whose
// errors name the file and the key. Getters with a default return it when the key is absent or null,
// as Hugging Face configs often write null for "use the default".
class JsonConfig {
 public:
  static JsonConfig load(const std::string& path);
  // `source_name` stands for the file name in error messages.
  static JsonConfig parse(const std::string& text, const std::string& source_name);

  const std::string& path() const { return path_; }
  const nlohmann::json& json() const { return json_; }

  bool has(const std::string& key) const;      // present, even if null
  bool is_null(const std::string& key) const;  // present and null

  // Integers accept integral floats such as 512.0.
  int get_int(const std::string& key) const;
  int get_int(const std::string& key, int default_value) const;
  int get_positive_int(const std::string& key) const;
  int get_positive_int(const std::string& key, int default_value) const;
  int get_non_negative_int(const std::string& key) const;
  int get_non_negative_int(const std::string& key, int default_value) const;
  float get_float(const std::string& key) const;
  float get_float(const std::string& key, float default_value) const;
  bool get_bool(const std::string& key) const;
  bool get_bool(const std::string& key, bool default_value) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& default_value) const;
  // An int or a list of ints (like eos_token_id); a single int gives a list of one.
  std::vector<int> get_int_list_or_int(const std::string& key) const;
  std::vector<int> get_int_list_or_int(const std::string& key, const std::vector<int>& default_value) const;
  // The object under `key`, whose getters' errors name "FILE: key".
  JsonConfig get_object(const std::string& key) const;

 private:
  JsonConfig(std::string path, nlohmann::json json) : path_(std::move(path)), json_(std::move(json)) {}
  const nlohmann::json& required(const std::string& key) const;
  bool present(const std::string& key) const;  // present and not null
  int to_int(const std::string& key, const nlohmann::json& value, const char* expected) const;
  [[noreturn]] void type_error(const std::string& key, const char* expected, const nlohmann::json& value) const;

  std::string path_;
  nlohmann::json json_;
};

}  // namespace elephant
