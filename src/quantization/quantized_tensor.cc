#include "quantization/quantized_tensor.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "elephant/error.h"
#include "quantization/quantized_layout.h"

namespace elephant {
namespace {

std::string shape_text(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// 4 bits: with 15 levels, clipping the largest weights of a group often lowers its total error (the other weights
// get finer steps). Among max |w| / 7 times 1, 0.975, ..., 0.6, the fp16 scale with the least squared error over
// the group wins; ties keep the larger scale, so a group of exactly representable weights keeps max |w| / 7.
uint16_t least_error_scale(const float* x, int64_t count, float amax, uint16_t absmax_scale) {
  const auto squared_error = [&](float scale) {
    const float inverse = 1.0f / scale;
    double sum = 0.0;
    for (int64_t j = 0; j < count; ++j) {
      const double e = x[j] - scale * std::clamp(std::nearbyint(x[j] * inverse), -7.0f, 7.0f);
      sum += e * e;
    }
    return sum;
  };
  if (half_to_float(absmax_scale) <= 0.0f) return absmax_scale;
  uint16_t best = absmax_scale;
  double best_error = squared_error(half_to_float(absmax_scale));
  for (int step = 1; step <= 16; ++step) {
    const uint16_t candidate = float_to_half(amax * (1.0f - 0.025f * static_cast<float>(step)) / 7.0f);
    if (half_to_float(candidate) <= 0.0f) break;
    const double error = squared_error(half_to_float(candidate));
    if (error < best_error) {
      best = candidate;
      best_error = error;
    }
  }
  return best;
}

int64_t matrices_of(const Shape& shape) {
  int64_t count = 1;
  for (size_t i = 0; i + 2 < shape.size(); ++i) count *= shape[i];
  return count;
}

}  // namespace

int64_t QuantizedTensor::dim(int axis) const {
  const int rank = static_cast<int>(shape.size());
  const int a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank)
    throw Error("QuantizedTensor::dim: axis " + std::to_string(axis) + " of " + shape_text(shape));
  return shape[static_cast<size_t>(a)];
}

int64_t QuantizedTensor::groups() const { return group_size == 0 ? 1 : shape.back() / group_size; }

QuantizedTensor QuantizedTensor::to(Device device) const {
  QuantizedTensor moved = *this;
  moved.layout = device == Device::CUDA ? cuda_layout(bits, shape) : PackedLayout::RowMajor;
  if (moved.layout == layout) {
    moved.values = values.to(device);
  } else if (moved.layout == PackedLayout::Tiled) {
    moved.values = tile_codes(values.to(Device::CPU)).to(device);
  } else {
    moved.values = untile_codes(values.to(Device::CPU)).to(device);
  }
  moved.scales = scales.to(device);
  return moved;
}

PackedLayout cuda_layout(int bits, const Shape& shape) {
  const bool tiles = bits == 8 && shape.size() == 3 && shape[1] % quantized_layout::kTile == 0 &&
                     shape[2] % quantized_layout::kTile == 0;
  return tiles ? PackedLayout::Tiled : PackedLayout::RowMajor;
}

namespace {

// Copies every 64-byte piece of a row-major stack to its tiled place (to_tiled) or back.
Tensor retile(const Tensor& values, bool to_tiled) {
  const int64_t n = values.dim(-2), row_bytes = values.dim(-1);
  if (values.device() != Device::CPU || values.dtype() != DType::I8 || n % quantized_layout::kTile != 0 ||
      row_bytes % quantized_layout::kTile != 0)
    throw Error(std::string(to_tiled ? "tile_codes" : "untile_codes") + ": I8 CPU codes of whole 64 x 64 tiles, got " +
                dtype_name(values.dtype()) + " " + shape_text(values.shape()));
  Tensor out = Tensor::empty(values.shape(), DType::I8, Device::CPU);
  const auto* src = values.data<int8_t>();
  auto* dst = out.data<int8_t>();
  const int64_t matrices = values.numel() / (n * row_bytes);
  // Bands of 64 rows spread over the threads: the paper model's int8 experts are ~4.8 GB to reorder at load (a 128 MiB
  // expert stack took 79 ms on one thread and 47 ms on two of a 2-core machine).
  const int64_t bands = n / quantized_layout::kTile;
#pragma omp parallel for schedule(static)
  for (int64_t band = 0; band < matrices * bands; ++band) {
    const int64_t m = band / bands, first_row = (band % bands) * quantized_layout::kTile;
    for (int64_t row = first_row; row < first_row + quantized_layout::kTile; ++row)
      for (int64_t b = 0; b < row_bytes; b += quantized_layout::kTile) {
        const int64_t row_major = (m * n + row) * row_bytes + b;
        const int64_t tiled = quantized_layout::tiled_offset(m, row, b, n, row_bytes);
        std::copy_n(src + (to_tiled ? row_major : tiled), quantized_layout::kTile,
                    dst + (to_tiled ? tiled : row_major));
      }
  }
  return out;
}

}  // namespace

Tensor tile_codes(const Tensor& values) { return retile(values, true); }
Tensor untile_codes(const Tensor& values) { return retile(values, false); }

QuantizedTensor quantize(const Tensor& weights, int bits, int64_t group_size, const std::string& what) {
  if (!supported_bits(bits)) throw Error(what + ": cannot quantize to " + std::to_string(bits) + " bits (8 or 4)");
  if (!supported_group_size(group_size))
    throw Error(what + ": group size " + std::to_string(group_size) + " is not supported (0 = per channel, 64, 128)");
  if (weights.rank() < 2 || weights.device() != Device::CPU)
    throw Error(what + ": quantize takes a CPU matrix or stack of matrices, got " + shape_text(weights.shape()));
  const int64_t n = weights.dim(-2), k = weights.dim(-1);
  if (k % kQuantBlock != 0 || (group_size != 0 && k % group_size != 0))
    throw Error(what + ": " + std::to_string(k) + " input features; quantized weights need a multiple of " +
                std::to_string(std::max<int64_t>(kQuantBlock, group_size)));
  const Tensor w = weights.to_float();
  const float* src = w.data<float>();
  const int64_t rows = matrices_of(weights.shape()) * n;
  const int64_t group = group_size == 0 ? k : group_size, groups = k / group;
  const float qmax = bits == 8 ? 127.0f : 7.0f;

  QuantizedTensor q;
  q.bits = bits;
  q.group_size = group_size;
  q.shape = weights.shape();
  Shape values_shape = q.shape, scales_shape = q.shape;
  if (bits == 4) values_shape.back() = k / 2;
  scales_shape.back() = groups;
  q.values = Tensor::zeros(values_shape, bits == 8 ? DType::I8 : DType::U8);
  q.scales = Tensor::empty(scales_shape, DType::F16);
  auto* scales = static_cast<uint16_t*>(q.scales.raw());
  auto* packed = static_cast<uint8_t*>(q.values.raw());
#pragma omp parallel for if (rows * k > 65536)
  for (int64_t row = 0; row < rows; ++row) {
    const float* x = src + row * k;
    uint8_t* out = packed + row * (bits == 8 ? k : k / 2);
    for (int64_t g = 0; g < groups; ++g) {
      float amax = 0.0f;
      for (int64_t j = g * group; j < (g + 1) * group; ++j) amax = std::max(amax, std::fabs(x[j]));
      // The scale is stored in fp16; the codes are rounded against that stored value so that dequantizing
      // reproduces them exactly. A zero group keeps scale 0 and codes 0.
      uint16_t stored = float_to_half(amax / qmax);
      if (bits == 4) stored = least_error_scale(x + g * group, group, amax, stored);
      scales[row * groups + g] = stored;
      const float scale = half_to_float(stored);
      const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
      for (int64_t j = g * group; j < (g + 1) * group; ++j) {
        const float code = std::clamp(std::nearbyint(x[j] * inverse), -qmax, qmax);
        const int64_t block = j / kQuantBlock, f = j % kQuantBlock;
        if (bits == 8) {
          out[block * kQuantBlock + quantized_layout::int8_slot(static_cast<int>(f))] =
              static_cast<uint8_t>(static_cast<int8_t>(code));
        } else {
          const int nibble = quantized_layout::int4_nibble(static_cast<int>(f));
          out[block * 16 + nibble / 2] |= static_cast<uint8_t>((static_cast<int>(code) + 8) << (4 * (nibble % 2)));
        }
      }
    }
  }
  return q;
}

namespace {

// Rows of one matrix, 32-feature block by block: a block has one scale (groups are whole blocks) and its codes sit
// in the slots the layout gives, so the per-feature work is one table lookup, one decode and one multiply.
template <int BITS>
void dequantize_blocks(const uint8_t* packed, const uint16_t* scales, int64_t count, int64_t k, int64_t groups,
                       float* out) {
  int slot[kQuantBlock];
  for (int f = 0; f < kQuantBlock; ++f) slot[f] = quantized_layout::slot_of(BITS, f);
  constexpr int64_t kBlockBytes = kQuantBlock * BITS / 8;
  const int64_t blocks = k / kQuantBlock, blocks_per_group = blocks / groups;
  for (int64_t r = 0; r < count; ++r) {
    const uint8_t* in = packed + r * blocks * kBlockBytes;
    float* x = out + r * k;
    for (int64_t b = 0; b < blocks; ++b) {
      const float scale = half_to_float(scales[r * groups + b / blocks_per_group]);
      const uint8_t* block = in + b * kBlockBytes;
      for (int f = 0; f < kQuantBlock; ++f)
        x[b * kQuantBlock + f] = static_cast<float>(quantized_layout::code_in_block(block, BITS, slot[f])) * scale;
    }
  }
}

// Rows [row, row + count) of matrix `matrix`, into out[count * k].
void dequantize_rows(const QuantizedTensor& quantized, int64_t matrix, int64_t row, int64_t count, float* out) {
  const int64_t n = quantized.dim(-2), k = quantized.dim(-1);
  const int64_t groups = quantized.groups();
  const int64_t first = matrix * n + row;
  const auto* scales = static_cast<const uint16_t*>(quantized.scales.raw()) + first * groups;
  const auto* packed = static_cast<const uint8_t*>(quantized.values.raw()) + first * (k * quantized.bits / 8);
  if (quantized.bits == 8) {
    dequantize_blocks<8>(packed, scales, count, k, groups, out);
  } else {
    dequantize_blocks<4>(packed, scales, count, k, groups, out);
  }
}

}  // namespace

void dequantize_matrix(const QuantizedTensor& quantized, int64_t matrix, float* out) {
  const int64_t n = quantized.dim(-2), k = quantized.dim(-1);
  // Threads pay off from the paper's 4M-weight experts; a small matrix converts faster than a team starts.
#pragma omp parallel for if (n * k >= (1 << 21))
  for (int64_t row = 0; row < n; row += 64)
    dequantize_rows(quantized, matrix, row, std::min<int64_t>(64, n - row), out + row * k);
}

Tensor dequantize(const QuantizedTensor& quantized) {
  if (quantized.device() != Device::CPU) return dequantize(quantized.to(Device::CPU));
  Tensor out = Tensor::empty(quantized.shape, DType::F32);
  const int64_t n = quantized.dim(-2), k = quantized.dim(-1);
  const int64_t matrices = matrices_of(quantized.shape);
  for (int64_t m = 0; m < matrices; ++m) dequantize_matrix(quantized, m, out.data<float>() + m * n * k);
  return out;
}

void check_quantized(const QuantizedTensor& quantized, const std::string& what) {
  const auto fail = [&](const std::string& why) { throw ModelError(what + ": " + why); };
  if (!supported_bits(quantized.bits)) fail(std::to_string(quantized.bits) + "-bit weights (8 or 4)");
  if (quantized.shape.size() < 2) fail("quantized weights must be matrices, got " + shape_text(quantized.shape));
  const int64_t k = quantized.shape.back();
  if (k % kQuantBlock != 0) fail(std::to_string(k) + " input features, not a multiple of 32");
  if (quantized.group_size != 0 && (k % quantized.group_size != 0))
    fail("group size " + std::to_string(quantized.group_size) + " does not divide " + std::to_string(k));
  Shape values = quantized.shape, scales = quantized.shape;
  if (quantized.bits == 4) values.back() = k / 2;
  scales.back() = quantized.groups();
  const DType values_dtype = quantized.bits == 8 ? DType::I8 : DType::U8;
  if (quantized.values.dtype() != values_dtype || quantized.values.shape() != values)
    fail("values are " + dtype_name(quantized.values.dtype()) + " " + shape_text(quantized.values.shape()) +
         ", expected " + dtype_name(values_dtype) + " " + shape_text(values) + " for " +
         std::to_string(quantized.bits) + "-bit weights of shape " + shape_text(quantized.shape));
  if (quantized.scales.dtype() != DType::F16 || quantized.scales.shape() != scales)
    fail("scales are " + dtype_name(quantized.scales.dtype()) + " " + shape_text(quantized.scales.shape()) +
         ", expected F16 " + shape_text(scales));
}

}  // namespace elephant
