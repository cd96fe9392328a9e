#include "io/utf8.h"

#include <gtest/gtest.h>

#include <string>

namespace elephant {
namespace {

size_t error_offset_of(const std::string& text) {
  size_t offset = 12345;
  EXPECT_FALSE(is_valid_utf8(text, &offset)) << text;
  return offset;
}

TEST(Utf8Test, AcceptsValidText) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("plain ASCII \t\n"));
  EXPECT_TRUE(is_valid_utf8(std::string("nul \0 inside", 12)));
  EXPECT_TRUE(is_valid_utf8("d\xC3\xA9j\xC3\xA0 vu"));     // 2-byte
  EXPECT_TRUE(is_valid_utf8("\xE2\x82\xAC 10"));           // U+20AC, 3-byte
  EXPECT_TRUE(is_valid_utf8("\xF0\x9F\x90\x98"));          // U+1F418, 4-byte
  EXPECT_TRUE(is_valid_utf8("\xC2\x80"));                  // U+0080, smallest 2-byte
  EXPECT_TRUE(is_valid_utf8("\xE0\xA0\x80"));              // U+0800, smallest 3-byte
  EXPECT_TRUE(is_valid_utf8("\xED\x9F\xBF\xEE\x80\x80"));  // U+D7FF and U+E000 around the surrogates
  EXPECT_TRUE(is_valid_utf8("\xEF\xBF\xBF"));              // U+FFFF
  EXPECT_TRUE(is_valid_utf8("\xF0\x90\x80\x80"));          // U+10000, smallest 4-byte
  EXPECT_TRUE(is_valid_utf8("\xF4\x8F\xBF\xBF"));          // U+10FFFF, the largest
  size_t untouched = 7;
  EXPECT_TRUE(is_valid_utf8("ok", &untouched));
  EXPECT_EQ(untouched, 7u);
}

TEST(Utf8Test, RejectsStrayAndInvalidBytes) {
  EXPECT_EQ(error_offset_of("ab\x80"), 2u);  // continuation without a lead
  EXPECT_EQ(error_offset_of("\xBF"), 0u);
  EXPECT_EQ(error_offset_of("a\xFFz"), 1u);
  EXPECT_EQ(error_offset_of("a\xFE"), 1u);
  EXPECT_EQ(error_offset_of("\xF8\x88\x80\x80\x80"), 0u);  // 5-byte form
  EXPECT_EQ(error_offset_of("\xC3(x"), 0u);                // lead followed by a non-continuation
  EXPECT_FALSE(is_valid_utf8("\xC3("));                    // null error_offset is allowed
}

TEST(Utf8Test, RejectsOverlongEncodings) {
  EXPECT_EQ(error_offset_of("\xC0\x80"), 0u);   // NUL in 2 bytes
  EXPECT_EQ(error_offset_of("x\xC1\xBF"), 1u);  // U+007F in 2 bytes
  EXPECT_EQ(error_offset_of("\xE0\x80\x80"), 0u);
  EXPECT_EQ(error_offset_of("\xE0\x9F\xBF"), 0u);  // U+07FF in 3 bytes
  EXPECT_EQ(error_offset_of("\xF0\x80\x80\x80"), 0u);
  EXPECT_EQ(error_offset_of("\xF0\x8F\xBF\xBF"), 0u);  // U+FFFF in 4 bytes
}

TEST(Utf8Test, RejectsSurrogatesAndBeyondUnicode) {
  EXPECT_EQ(error_offset_of("\xED\xA0\x80"), 0u);      // U+D800
  EXPECT_EQ(error_offset_of("ok\xED\xBF\xBF"), 2u);    // U+DFFF
  EXPECT_EQ(error_offset_of("\xF4\x90\x80\x80"), 0u);  // U+110000
  EXPECT_EQ(error_offset_of("\xF5\x80\x80\x80"), 0u);
  EXPECT_EQ(error_offset_of("\xF7\xBF\xBF\xBF"), 0u);
}

TEST(Utf8Test, RejectsTruncatedSequences) {
  EXPECT_EQ(error_offset_of("\xC3"), 0u);
  EXPECT_EQ(error_offset_of("abc\xE2\x82"), 3u);
  EXPECT_EQ(error_offset_of("\xE2\x82z"), 0u);
  EXPECT_EQ(error_offset_of("\xF0\x9F\x90"), 0u);
  EXPECT_EQ(error_offset_of("\xC3\xA9\xF0\x9F\x90 "), 2u);
}

}  // namespace
}  // namespace elephant
