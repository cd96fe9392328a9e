#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace elephant {

// Symmetric integer weights: w[..., i, j] ~= scales[..., i, j / group] * q[..., i, j], the paper's scheme (one fp16
// scale per output channel) or, with a group size, one scale per `group_size` input features of a channel.
// q is in [-127, 127] (8 bits) or [-7, 7] (4 bits); scale = max |w| over the channel (or group) / 127. For 4 bits,
// scale = max |w| / 7 times the clipping factor (1, 0.975, ..., 0.6) that gives the group the least squared error.
//
// Storage (the on-disk format of a quantized checkpoint too, README "Quantized checkpoints"): the last axis, k, is
// stored in blocks of 32 input features, permuted so that a tensor-core thread finds the four features one MMA step
// gives it (k = 2t, 2t + 1, 2t + 8, 2t + 9 of each 16-feature half, t = 0..3) in adjacent bits.
//   int8: I8 [..., n, k]. Byte 4t + j of each 16-byte half-block holds feature (2t, 2t + 1, 2t + 8, 2t + 9)[j] of
//         that half.
//   int4: U8 [..., n, k / 2], q + 8 in each nibble. Little-endian 32-bit word t of each 16-byte block holds, from
//         its lowest nibble up, features 2t, 2t + 8, 16 + 2t, 16 + 2t + 8, 2t + 1, 2t + 9, 16 + 2t + 1, 16 + 2t + 9.
//         Masking a word with 0x000f000f after shifting it by 0, 4, 8 or 12 bits yields two features that one
//         half2 register needs, which an OR with the bits of 1024.0 turns into halves with no conversion instruction.
// k must be a multiple of 32 (and of the group size).
//
// On CUDA, int8 expert stacks ([experts, n, k], n and k multiples of 64) are stored tiled (quantized_layout.h,
// tiled_offset): a grouped-GEMM stage of 64 rows x 64 features then reads one contiguous 4 KiB block instead of 64
// pieces of 64 bytes a row apart. Measured on the H100: the paper's Table 1 int8 GEMM at 32 experts 64.0 -> 57.5 us,
// the MoE layer with int8 experts at 40 tokens 98.5 -> 87.0 us. int4 stacks gained nothing that way and stay row-major.
// `to` converts between the layouts; CPU tensors are always row-major.
enum class PackedLayout { RowMajor, Tiled };

struct QuantizedTensor {
  Tensor values;                                 // I8 or U8 (int4, packed), as above
  Tensor scales;                                 // F16 [..., n, k / group_size], or [..., n, 1] per channel
  int bits = 8;                                  // 8 or 4
  int64_t group_size = 0;                        // 0: one scale per output channel
  Shape shape;                                   // the logical [..., n, k]
  PackedLayout layout = PackedLayout::RowMajor;  // of `values`

  bool defined() const { return values.defined(); }
  Device device() const { return values.device(); }
  int64_t dim(int axis) const;  // of the logical shape; negative axes count from the end
  int64_t groups() const;       // scales per output channel
  QuantizedTensor to(Device device) const;
  int64_t nbytes() const { return static_cast<int64_t>(values.nbytes() + scales.nbytes()); }
};

constexpr int64_t kQuantBlock = 32;

// The layout `to(Device::CUDA)` gives a quantized tensor of `bits` and logical `shape`.
PackedLayout cuda_layout(int bits, const Shape& shape);

// The codes of a CPU row-major int8 stack [..., n, k] in PackedLayout::Tiled order, and back.
Tensor tile_codes(const Tensor& values);
Tensor untile_codes(const Tensor& values);

// The supported schemes: 8 or 4 bits; one scale per output channel (group size 0) or per 64 or 128 input features.
constexpr bool supported_bits(int bits) { return bits == 8 || bits == 4; }
constexpr bool supported_group_size(int64_t group_size) {
  return group_size == 0 || group_size == 64 || group_size == 128;
}

// A quantization to ask for or to describe a checkpoint with; bits 0 means none (float weights).
struct QuantizationScheme {
  int bits = 0;
  int64_t group_size = 0;

  bool quantized() const { return bits != 0; }
  bool operator==(const QuantizationScheme& other) const {
    return bits == other.bits && group_size == other.group_size;
  }
};

// Quantizes a CPU tensor [..., n, k] in F32, F16 or BF16. Throws elephant::Error naming `what` (a tensor name, for
// the message) when k is not a multiple of 32 or of the group size, or bits / group_size are not supported (8 or 4;
// 0, 64 or 128).
QuantizedTensor quantize(const Tensor& weights, int bits, int64_t group_size, const std::string& what);

// The float32 weights q * scale (CPU), in the logical layout.
Tensor dequantize(const QuantizedTensor& quantized);

// Matrix `matrix` of the stack (flattened over the leading axes), dequantized into out[n * k] float32: the CPU GEMMs'
// conversion right before their BLAS call, spread over threads for matrices of 2M weights and more.
void dequantize_matrix(const QuantizedTensor& quantized, int64_t matrix, float* out);

// Checks that values and scales have the dtypes and shapes `shape`, `bits` and `group_size` call for: throws
// elephant::Error naming `what` and both shapes otherwise (a corrupted or mismatched checkpoint).
void check_quantized(const QuantizedTensor& quantized, const std::string& what);

}  // namespace elephant
