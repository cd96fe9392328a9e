#pragma once

// The storage order of quantized codes (quantized_tensor.h), shared by the quantizer, the CPU's dequantization and
// the CUDA kernels that read codes one at a time.

#include <cstdint>

#include "core/host_device.h"

namespace elephant::quantized_layout {

// The byte of an int8 32-feature block that holds feature f (0..31).
ELEPHANT_HOST_DEVICE inline int int8_slot(int f) {
  const int half = f / 16, r = f % 16;
  return half * 16 + 4 * ((r % 8) / 2) + (r >= 8 ? 2 : 0) + r % 2;
}

// The nibble (2 * byte + high) of an int4 32-feature block that holds feature f: word t = (f % 8) / 2 of the block
// holds nibbles 8t .. 8t + 7, lowest first (little-endian).
ELEPHANT_HOST_DEVICE inline int int4_nibble(int f) {
  const int half = f / 16, r = f % 16;
  return 8 * ((r % 8) / 2) + (r % 2 ? 4 : 0) + 2 * half + (r >= 8 ? 1 : 0);
}

// Where feature f of a 32-feature block is: int8_slot or int4_nibble.
ELEPHANT_HOST_DEVICE inline int slot_of(int bits, int f) { return bits == 8 ? int8_slot(f) : int4_nibble(f); }

// The signed code in slot `slot` of one 32-feature block (32 bytes for int8, 16 for int4).
ELEPHANT_HOST_DEVICE inline int code_in_block(const uint8_t* block, int bits, int slot) {
  if (bits == 8) return static_cast<int8_t>(block[slot]);
  return ((block[slot / 2] >> (4 * (slot % 2))) & 0xf) - 8;
}

// The byte of a row of int8 codes that holds feature j.
ELEPHANT_HOST_DEVICE inline int64_t int8_byte(int64_t j) { return (j / 32) * 32 + int8_slot(static_cast<int>(j % 32)); }

// The signed code of feature j of one row of packed codes (k * bits / 8 bytes).
ELEPHANT_HOST_DEVICE inline int code_at(const uint8_t* row, int bits, int64_t j) {
  if (bits == 8) return static_cast<int8_t>(row[int8_byte(j)]);
  return code_in_block(row + (j / 32) * 16, bits, int4_nibble(static_cast<int>(j % 32)));
}

// The tiled byte order of int8 expert stacks on CUDA (PackedLayout::Tiled, quantized_tensor.h): each 64-row x
// 64-byte tile of a matrix of `n` rows of `row_bytes` bytes is one contiguous 4 KiB block, the blocks of a matrix in
// (row tile, byte tile) order. The offset of byte `b` of row `row` of matrix `matrix` (n, row_bytes multiples of 64).
constexpr int kTile = 64;
ELEPHANT_HOST_DEVICE inline int64_t tiled_offset(int64_t matrix, int64_t row, int64_t b, int64_t n, int64_t row_bytes) {
  return ((matrix * (n / kTile) + row / kTile) * (row_bytes / kTile) + b / kTile) * (kTile * kTile) +
         (row % kTile) * kTile + b % kTile;
}

}  // namespace elephant::quantized_layout
