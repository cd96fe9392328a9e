#include "io/utf8.h"

#include <cstdint>

namespace elephant {

namespace {

bool is_continuation(unsigned char byte) { return (byte & 0xC0) == 0x80; }

// Length of the valid sequence starting at `offset`, or 0 when it is invalid.
size_t valid_sequence_length(std::string_view text, size_t offset) {
  const auto byte_at = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte_at(offset);
  if (lead < 0x80) return 1;

  size_t length;
  uint32_t code_point;
  uint32_t min_code_point;
  if ((lead & 0xE0) == 0xC0) {
    length = 2;
    code_point = lead & 0x1F;
    min_code_point = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    code_point = lead & 0x0F;
    min_code_point = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    code_point = lead & 0x07;
    min_code_point = 0x10000;
  } else {
    return 0;  // a continuation byte without a lead, or 0xF8..0xFF
  }

  if (text.size() - offset < length) return 0;
  for (size_t i = 1; i < length; ++i) {
    const unsigned char byte = byte_at(offset + i);
    if (!is_continuation(byte)) return 0;
    code_point = (code_point << 6) | (byte & 0x3F);
  }
  if (code_point < min_code_point) return 0;
  if (code_point >= 0xD800 && code_point <= 0xDFFF) return 0;
  if (code_point > 0x10FFFF) return 0;
  return length;
}

}  // namespace

bool is_valid_utf8(std::string_view text, size_t* error_offset) {
  size_t offset = 0;
  while (offset < text.size()) {
    const size_t length = valid_sequence_length(text, offset);
    if (length == 0) {
      if (error_offset) *error_offset = offset;
      return false;
    }
    offset += length;
  }
  return true;
}

}  // namespace elephant
