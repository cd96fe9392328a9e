// The public ops: argument checks shared by every backend, then the backend of the tensors' device.

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

#include "core/device_memory.h"
#include "elephant/error.h"
#include "ops/backends.h"
#include "ops/elementwise.h"
#include "ops/gather.h"
#include "ops/gemm_cuda.h"
#include "ops/moe_cuda.h"
#include "ops/rms_norm.h"
#include "ops/softmax.h"
#include "ops/topk_cuda.h"

namespace elephant::ops {
namespace {

std::string describe(const Tensor& t) {
  return dtype_name(t.dtype()) + shape_string(t.shape()) + "@" + to_string(t.device());
}

[[noreturn]] void fail(const std::string& op, const std::string& what) {
  throw std::invalid_argument(op + ": " + what);
}

void same_device(const std::string& op, const Tensor& a, const Tensor& b) {
  if (a.device() != b.device()) fail(op, "tensors on different devices: " + describe(a) + " and " + describe(b));
}

// Floating tensors on the CPU are float32: the CPU backend computes in float32 only.
void check_floating(const std::string& op, const Tensor& t) {
  if (!is_floating(t.dtype())) fail(op, "expected a floating tensor, got " + describe(t));
  if (t.device() == Device::CPU && t.dtype() != DType::F32)
    fail(op, "the CPU backend computes in F32, got " + describe(t));
}

void check_dtype(const std::string& op, const Tensor& t, DType dtype, const char* name) {
  if (t.dtype() != dtype) fail(op, std::string(name) + " must be " + dtype_name(dtype) + ", got " + describe(t));
}

// On the CPU the index arrays can be checked before anything is written; on a device they are trusted (reading
// them would synchronize) and the kernels skip or zero what falls outside. The position of the first index
// outside [0, limit) among the first `count`, or -1.
int64_t first_index_outside(const Tensor& indices, int64_t count, int64_t limit) {
  if (indices.device() != Device::CPU) return -1;
  const int32_t* index = indices.data<int32_t>();
  for (int64_t i = 0; i < count; ++i)
    if (index[i] < 0 || index[i] >= limit) return i;
  return -1;
}

#ifdef ELEPHANT_WITH_CUDA
#define ELEPHANT_DISPATCH(device, call) return (device) == Device::CUDA ? cuda::call : cpu::call
#else
#define ELEPHANT_DISPATCH(device, call)                                                         \
  if ((device) == Device::CUDA) throw UsageError("this build of elephant has no CUDA backend"); \
  return cpu::call
#endif

// x [rows, k] by a quantized Linear weight [n, k] into y [rows, n], all on one device, y in x's dtype.
void check_quantized_linear(const std::string& op, const Tensor& x, const QuantizedTensor& weight, const Tensor& y) {
  check_quantized(weight, op + " weight");
  same_device(op, x, y);
  check_floating(op, x);
  if (weight.device() != x.device() || weight.scales.device() != x.device() || weight.shape.size() != 2 ||
      x.rank() != 2 || y.rank() != 2 || x.dim(1) != weight.dim(1) || y.dim(0) != x.dim(0) ||
      y.dim(1) != weight.dim(0) || y.dtype() != x.dtype())
    fail(op, "x " + describe(x) + ", int" + std::to_string(weight.bits) + " weight " + describe(weight.values) +
                 " (logical [" + std::to_string(weight.dim(0)) + ", " + std::to_string(weight.dim(-1)) + "]), y " +
                 describe(y));
}

}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmArgs& args) {
  if (a.rank() != 2 || b.rank() != 2 || c.rank() != 2)
    fail("gemm", "expected 2-D tensors, got a " + describe(a) + ", b " + describe(b) + ", c " + describe(c));
  same_device("gemm", a, b);
  same_device("gemm", a, c);
  check_floating("gemm", a);
  if (b.dtype() != a.dtype() || (c.dtype() != a.dtype() && c.dtype() != DType::F32))
    fail("gemm", "dtypes do not match: a " + describe(a) + ", b " + describe(b) + ", c " + describe(c));
  const int64_t n = args.transpose_b ? b.dim(0) : b.dim(1);
  const int64_t k = args.transpose_b ? b.dim(1) : b.dim(0);
  if (k != a.dim(1) || c.dim(0) != a.dim(0) || c.dim(1) != n)
    fail("gemm", "shapes do not match: a " + describe(a) + ", b " + describe(b) +
                     (args.transpose_b ? " (transposed)" : "") + ", c " + describe(c));
  if (c.numel() == 0) return;
  if (args.activation) {
#ifdef ELEPHANT_WITH_CUDA
    if (a.device() == Device::CUDA && cuda::small_m_gemm(a, b, c, args)) return;  // in the kernel's epilogue
#endif
    GemmArgs product = args;
    product.activation.reset();
    [&] { ELEPHANT_DISPATCH(a.device(), gemm(a, b, c, product)); }();  // checked above: the backend's product alone
    activate(*args.activation, c);
    return;
  }
  ELEPHANT_DISPATCH(a.device(), gemm(a, b, c, args));
}

Tensor linear(const Tensor& x, const Tensor& weight) {
  if (weight.rank() != 2 || x.rank() < 1 || x.dim(-1) != weight.dim(1))
    fail("linear", "x " + describe(x) + " does not match the weight " + describe(weight));
  Shape out_shape = x.shape();
  out_shape.back() = weight.dim(0);
  const int64_t rows = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  Tensor y2 = y.reshape({rows, weight.dim(0)});
  GemmArgs args;
  args.b_is_weight = true;
  gemm(x.reshape({rows, x.dim(-1)}), weight, y2, args);
  return y;
}

void quantized_linear(const Tensor& x, const QuantizedTensor& weight, Tensor& y, const QuantizedLinearArgs& args) {
  check_quantized_linear("quantized_linear", x, weight, y);
  if (y.numel() == 0) return;
  ELEPHANT_DISPATCH(x.device(), quantized_linear(x, weight, y, args));
}

void linear_stack(const Tensor& x, const Tensor& weights, Tensor& y) {
  same_device("linear_stack", x, weights);
  same_device("linear_stack", x, y);
  check_floating("linear_stack", x);
  if (x.rank() != 2 || weights.rank() != 3 || y.rank() != 3 || weights.dim(2) != x.dim(1) ||
      y.shape() != Shape{weights.dim(0), x.dim(0), weights.dim(1)} || weights.dtype() != x.dtype() ||
      y.dtype() != x.dtype())
    fail("linear_stack", "x " + describe(x) + ", weights " + describe(weights) + ", y " + describe(y));
  if (y.numel() == 0) return;
  if (x.dim(1) == 0) {
    device_fill_zero(y.raw(), y.device(), y.nbytes());
    return;
  }
  ELEPHANT_DISPATCH(x.device(), linear_stack(x, weights, y));
}

void rms_norm_linear(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weights, Tensor& y,
                     const NormLinearArgs& args) {
  same_device("rms_norm_linear", x, norm_weight);
  same_device("rms_norm_linear", x, weights);
  same_device("rms_norm_linear", x, y);
  check_floating("rms_norm_linear", x);
  const bool stack = weights.rank() == 3;
  const bool shapes_match =
      x.rank() == 2 && (weights.rank() == 2 || stack) && weights.dim(-1) == x.dim(1) &&
      norm_weight.shape() == Shape{x.dim(1)} &&
      y.shape() == (stack ? Shape{weights.dim(0), x.dim(0), weights.dim(1)} : Shape{x.dim(0), weights.dim(0)});
  if (!shapes_match || norm_weight.dtype() != x.dtype() || weights.dtype() != x.dtype() ||
      (y.dtype() != x.dtype() && (stack || y.dtype() != DType::F32)))
    fail("rms_norm_linear", "x " + describe(x) + ", norm weight " + describe(norm_weight) + ", weights " +
                                describe(weights) + ", y " + describe(y));
  if (y.numel() == 0) return;
  if (x.dim(1) == 0) {
    device_fill_zero(y.raw(), y.device(), y.nbytes());
    return;
  }
#ifdef ELEPHANT_WITH_CUDA
  if (x.device() == Device::CUDA && cuda::small_m_rms_norm_linear(x, norm_weight, eps, weights, y, args)) return;
#endif
  // Everywhere else the separate ops, whose rounding the fused kernel reproduces.
  Tensor normalized = Tensor::empty(x.shape(), x.dtype(), x.device());
  rms_norm(x, norm_weight, eps, normalized);
  if (args.scale != 1.0f) scale_in_place(normalized, args.scale);
  if (stack) {
    linear_stack(normalized, weights, y);
    if (args.activation) activate(*args.activation, y);
  } else {
    GemmArgs projection;
    projection.b_is_weight = true;
    projection.activation = args.activation;
    gemm(normalized, weights, y, projection);
  }
}

void rms_norm_linear(const Tensor& x, const Tensor& norm_weight, float eps, const QuantizedTensor& weight, Tensor& y,
                     const NormLinearArgs& args) {
  check_quantized_linear("rms_norm_linear", x, weight, y);
  same_device("rms_norm_linear", x, norm_weight);
  if (norm_weight.shape() != Shape{x.dim(1)} || norm_weight.dtype() != x.dtype())
    fail("rms_norm_linear", "x " + describe(x) + ", norm weight " + describe(norm_weight));
  if (args.scale != 1.0f)
    fail("rms_norm_linear", "a scale of " + std::to_string(args.scale) + " with a quantized weight (only 1)");
  if (y.numel() == 0) return;
  bool fused = false;
#ifdef ELEPHANT_WITH_CUDA
  fused = x.device() == Device::CUDA && cuda::small_m_rms_norm_quantized_linear(x, norm_weight, eps, weight, y);
#endif
  if (!fused) {
    // Everywhere else the separate ops, whose rounding the fused kernel reproduces.
    Tensor normalized = Tensor::empty(x.shape(), x.dtype(), x.device());
    rms_norm(x, norm_weight, eps, normalized);
    quantized_linear(normalized, weight, y);
  }
  if (args.activation) activate(*args.activation, y);
}

void add_in_place(Tensor& hidden, const Tensor& y) {
  same_device("add_in_place", hidden, y);
  check_floating("add_in_place", hidden);
  if (hidden.shape() != y.shape() || hidden.dtype() != y.dtype())
    fail("add_in_place", describe(hidden) + " += " + describe(y));
  if (hidden.numel() == 0) return;
  ELEPHANT_DISPATCH(hidden.device(), add_in_place(hidden, y));
}

void scale_in_place(Tensor& x, float factor) {
  check_floating("scale_in_place", x);
  if (x.numel() == 0) return;
  ELEPHANT_DISPATCH(x.device(), scale_in_place(x, factor));
}

void add_scalar(Tensor& x, int32_t value) {
  check_dtype("add_scalar", x, DType::I32, "x");
  if (x.numel() == 0) return;
  ELEPHANT_DISPATCH(x.device(), add_scalar(x, value));
}

void convert(const Tensor& x, Tensor& y) {
  same_device("convert", x, y);
  if (!is_floating(x.dtype()) || !is_floating(y.dtype()) || x.shape() != y.shape())
    fail("convert", describe(x) + " to " + describe(y));
  if (x.numel() == 0) return;
  ELEPHANT_DISPATCH(x.device(), convert(x, y));
}

Tensor convert(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor y = Tensor::empty(x.shape(), dtype, x.device());
  convert(x, y);
  return y;
}

void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  same_device("rms_norm", x, weight);
  same_device("rms_norm", x, y);
  check_floating("rms_norm", x);
  if (x.rank() < 1 || weight.rank() != 1 || weight.dim(0) != x.dim(-1) || y.shape() != x.shape() ||
      weight.dtype() != x.dtype() || y.dtype() != x.dtype())
    fail("rms_norm", "x " + describe(x) + ", weight " + describe(weight) + ", y " + describe(y));
  if (x.numel() == 0) return;
  ELEPHANT_DISPATCH(x.device(), rms_norm(x, weight, eps, y));
}

void activate(Activation activation, Tensor& x) {
  check_floating("activate", x);
  if (x.numel() == 0) return;
  ELEPHANT_DISPATCH(x.device(), activate(activation, x));
}

void softmax(Tensor& x) {
  check_floating("softmax", x);
  if (x.rank() < 1) fail("softmax", "expected at least one dimension, got " + describe(x));
  if (x.numel() == 0) return;
  ELEPHANT_DISPATCH(x.device(), softmax(x));
}

void log_softmax(const Tensor& x, Tensor& y) {
  same_device("log_softmax", x, y);
  check_floating("log_softmax", x);
  check_dtype("log_softmax", y, DType::F32, "y");
  if (x.rank() < 1 || y.shape() != x.shape()) fail("log_softmax", "x " + describe(x) + ", y " + describe(y));
  if (x.numel() == 0) return;
  ELEPHANT_DISPATCH(x.device(), log_softmax(x, y));
}

void gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) {
  same_device("gather_rows", x, rows);
  same_device("gather_rows", x, out);
  check_dtype("gather_rows", rows, DType::I32, "rows");
  if (x.rank() < 1 || out.rank() < 1 || rows.rank() != 1 || rows.dim(0) < out.dim(0) || out.dtype() != x.dtype() ||
      shape_numel(Shape(out.shape().begin() + 1, out.shape().end())) !=
          shape_numel(Shape(x.shape().begin() + 1, x.shape().end())))
    fail("gather_rows", "x " + describe(x) + ", rows " + describe(rows) + ", out " + describe(out));
  if (out.numel() == 0) return;
  if (const int64_t bad = first_index_outside(rows, out.dim(0), x.dim(0)); bad >= 0)
    throw std::out_of_range("gather_rows: row " + std::to_string(rows.data<int32_t>()[bad]) + " outside [0, " +
                            std::to_string(x.dim(0)) + ")");
  ELEPHANT_DISPATCH(x.device(), gather_rows(x, rows, out));
}

void gather_cache_rows(const Tensor& cache, const Tensor& rows, int64_t steps, Tensor& out) {
  same_device("gather_cache_rows", cache, rows);
  same_device("gather_cache_rows", cache, out);
  check_dtype("gather_cache_rows", rows, DType::I32, "rows");
  if (cache.rank() != 3 || out.rank() != 3 || rows.rank() != 1 || rows.dim(0) < out.dim(0) || steps < 0 ||
      steps > cache.dim(1) || steps > out.dim(1) || out.dim(2) != cache.dim(2) || out.dtype() != cache.dtype())
    fail("gather_cache_rows", "cache " + describe(cache) + ", rows " + describe(rows) + ", " + std::to_string(steps) +
                                  " steps, out " + describe(out));
  if (out.dim(0) == 0 || steps == 0 || cache.dim(2) == 0) return;
  if (const int64_t bad = first_index_outside(rows, out.dim(0), cache.dim(0)); bad >= 0)
    throw std::out_of_range("gather_cache_rows: row " + std::to_string(rows.data<int32_t>()[bad]) + " of " +
                            std::to_string(cache.dim(0)));
  ELEPHANT_DISPATCH(cache.device(), gather_cache_rows(cache, rows, steps, out));
}

void reorder_cache_groups(const std::vector<Tensor*>& caches, const Tensor& parents, int64_t group, int64_t steps) {
  const std::string op = "reorder_cache_groups";
  if (caches.empty()) return;
  const Tensor& first = *caches.front();
  check_dtype(op, parents, DType::I32, "parents");
  for (const Tensor* cache : caches) {
    same_device(op, *cache, parents);
    if (cache->rank() != 3 || cache->shape() != first.shape() || cache->dtype() != first.dtype())
      fail(op, "cache " + describe(*cache) + " beside " + describe(first));
  }
  if (parents.rank() != 1 || parents.dim(0) != first.dim(0) || group < 1 || group > kMaxCacheGroup ||
      first.dim(0) % group != 0 || steps < 0 || steps > first.dim(1))
    fail(op, "caches " + describe(first) + ", parents " + describe(parents) + ", groups of " + std::to_string(group) +
                 ", " + std::to_string(steps) + " steps");
  if (first.dim(0) == 0 || steps == 0 || first.dim(2) == 0) return;
  if (parents.device() == Device::CPU)
    for (int64_t r = 0; r < first.dim(0); ++r) {
      const int64_t begin = r - r % group, parent = parents.data<int32_t>()[r];
      if (parent < begin || parent >= begin + group)
        throw std::out_of_range(op + ": row " + std::to_string(r) + " continues row " + std::to_string(parent) +
                                ", outside its group [" + std::to_string(begin) + ", " + std::to_string(begin + group) +
                                ")");
    }
  ELEPHANT_DISPATCH(first.device(), reorder_cache_groups(caches, parents, group, steps));
}

void write_cache_step(const Tensor& values, const Tensor& slots, Tensor& cache) {
  same_device("write_cache_step", values, cache);
  same_device("write_cache_step", slots, cache);
  check_dtype("write_cache_step", slots, DType::I32, "slots");
  if (values.rank() != 2 || cache.rank() != 3 || slots.rank() != 1 || values.dim(0) > cache.dim(0) ||
      slots.dim(0) < values.dim(0) || values.dim(1) != cache.dim(2) || values.dtype() != cache.dtype())
    fail("write_cache_step",
         "values " + describe(values) + " at slots " + describe(slots) + " into " + describe(cache));
  if (values.numel() == 0) return;
  if (const int64_t bad = first_index_outside(slots, values.dim(0), cache.dim(1)); bad >= 0)
    fail("write_cache_step", "slot " + std::to_string(slots.data<int32_t>()[bad]) + " of row " + std::to_string(bad) +
                                 " outside " + describe(cache));
  ELEPHANT_DISPATCH(values.device(), write_cache_step(values, slots, cache));
}

namespace {

// The leading values.size() elements of `storage` (reallocated only when too small), set from the host.
Tensor assign_from_host(Tensor& storage, const std::vector<int32_t>& values, Device device) {
  const auto count = static_cast<int64_t>(values.size());
  if (!storage.defined() || storage.device() != device || storage.dim(0) < count)
    storage = Tensor::empty({count}, DType::I32, device);
  Tensor view = storage.narrow(0, count);
  view.copy_from(Tensor::from_vector(values, {count}));
  return view;
}

}  // namespace

AttentionLayout AttentionLayout::from_host(const std::vector<int32_t>& query_begin,
                                           const std::vector<int32_t>& key_begin,
                                           const std::vector<int32_t>& key_length,
                                           const std::vector<int32_t>& query_position, Device device) {
  AttentionLayout storage;
  return from_host(query_begin, key_begin, key_length, query_position, device, storage);
}

AttentionLayout AttentionLayout::from_host(const std::vector<int32_t>& query_begin,
                                           const std::vector<int32_t>& key_begin,
                                           const std::vector<int32_t>& key_length,
                                           const std::vector<int32_t>& query_position, Device device,
                                           AttentionLayout& storage) {
  const size_t sequences = key_begin.size();
  if (query_begin.size() != sequences + 1 || key_length.size() != sequences || query_position.size() != sequences)
    fail("AttentionLayout", "arrays of " + std::to_string(query_begin.size()) + ", " + std::to_string(sequences) +
                                ", " + std::to_string(key_length.size()) + ", " +
                                std::to_string(query_position.size()) + " elements for " + std::to_string(sequences) +
                                " sequences");
  AttentionLayout layout;
  layout.query_begin = assign_from_host(storage.query_begin, query_begin, device);
  layout.key_begin = assign_from_host(storage.key_begin, key_begin, device);
  layout.key_length = assign_from_host(storage.key_length, key_length, device);
  layout.query_position = assign_from_host(storage.query_position, query_position, device);
  for (size_t i = 0; i < sequences; ++i) {
    layout.max_queries = std::max<int64_t>(layout.max_queries, query_begin[i + 1] - query_begin[i]);
    layout.max_keys = std::max<int64_t>(layout.max_keys, key_length[i]);
  }
  return layout;
}

namespace {

// The checks ops::attention and ops::attention_with_append share; the messages name the op and the key and
// value tensors as the caller calls them.
void check_attention(const std::string& op, const Tensor& queries, const Tensor& keys, const Tensor& values,
                     const AttentionLayout& layout, const AttentionArgs& args, const Tensor& out,
                     const std::string& keys_name = "keys", const std::string& values_name = "values") {
  const int64_t inner = static_cast<int64_t>(args.num_heads) * args.head_dim;
  const std::string shapes = "queries " + describe(queries) + ", " + keys_name + " " + describe(keys) + ", " +
                             values_name + " " + describe(values) + ", out " + describe(out);
  same_device(op, queries, keys);
  same_device(op, queries, values);
  same_device(op, queries, out);
  check_floating(op, queries);
  if (args.num_heads <= 0 || args.head_dim <= 0 || queries.rank() != 2 || keys.rank() != 2 || queries.dim(1) != inner ||
      keys.dim(1) != inner || values.shape() != keys.shape() || out.shape() != queries.shape() ||
      keys.dtype() != queries.dtype() || values.dtype() != queries.dtype() || out.dtype() != queries.dtype())
    fail(op, shapes + " for " + std::to_string(args.num_heads) + " heads of " + std::to_string(args.head_dim));
  const int64_t sequences = layout.sequences();
  for (const Tensor* array : {&layout.query_begin, &layout.key_begin, &layout.key_length, &layout.query_position}) {
    if (!array->defined() || array->dtype() != DType::I32 || array->device() != queries.device())
      fail(op, "layout arrays must be I32 tensors on " + to_string(queries.device()));
  }
  if (layout.query_begin.dim(0) != sequences + 1 || layout.key_length.dim(0) != sequences ||
      layout.query_position.dim(0) != sequences)
    fail(op, "layout arrays of different lengths for " + std::to_string(sequences) + " sequences");
  if (args.position_bias) {
    const Tensor& bias = *args.position_bias;
    if (bias.device() != queries.device() || bias.dtype() != DType::F32 ||
        bias.shape() != Shape{args.num_heads, 2 * static_cast<int64_t>(args.bias_max_offset) + 1})
      fail(op, "position bias " + describe(bias) + " for " + std::to_string(args.num_heads) +
                   " heads and offsets up to " + std::to_string(args.bias_max_offset));
  }
  // On the CPU the layout can be checked against the tensors; on a device it is trusted (reading it would
  // synchronize), and the kernels clamp nothing: the model code builds it.
  if (queries.device() == Device::CPU) {
    const int32_t* query_begin = layout.query_begin.data<int32_t>();
    const int32_t* key_begin = layout.key_begin.data<int32_t>();
    const int32_t* key_length = layout.key_length.data<int32_t>();
    const int32_t* query_position = layout.query_position.data<int32_t>();
    if (query_begin[0] < 0 || query_begin[sequences] > queries.dim(0)) fail(op, shapes + " do not match the layout");
    for (int64_t s = 0; s < sequences; ++s) {
      const int64_t queries_here = query_begin[s + 1] - query_begin[s];
      if (queries_here < 0 || queries_here > layout.max_queries || key_length[s] > layout.max_keys ||
          key_length[s] < 0 || key_begin[s] < 0 || key_begin[s] + key_length[s] > keys.dim(0))
        fail(op, "sequence " + std::to_string(s) + " of the layout is out of range of " + shapes);
      const int64_t first = query_position[s];
      const int64_t last = first + queries_here - 1;
      if (args.position_bias && (last > args.bias_max_offset || key_length[s] - 1 - first > args.bias_max_offset))
        fail(op, "position bias covers distances up to " + std::to_string(args.bias_max_offset) + ", sequence " +
                     std::to_string(s) + " needs more");
    }
  }
}

}  // namespace

void attention(const Tensor& queries, const Tensor& keys, const Tensor& values, const AttentionLayout& layout,
               const AttentionArgs& args, Tensor& out) {
  check_attention("attention", queries, keys, values, layout, args, out);
  if (queries.numel() == 0 || layout.sequences() == 0) return;
  ELEPHANT_DISPATCH(queries.device(), attention(queries, keys, values, layout, args, out));
}

void attention_with_append(const Tensor& queries, const Tensor& new_keys, const Tensor& new_values, Tensor& key_cache,
                           Tensor& value_cache, const AttentionLayout& layout, const AttentionArgs& args, Tensor& out) {
  const std::string op = "attention_with_append";
  check_attention(op, queries, key_cache, value_cache, layout, args, out, "key_cache", "value_cache");
  for (auto [name, rows] :
       {std::pair<const char*, const Tensor*>{"new_keys", &new_keys}, {"new_values", &new_values}}) {
    same_device(op, queries, *rows);
    if (rows->shape() != queries.shape() || rows->dtype() != queries.dtype())
      fail(op, std::string(name) + " " + describe(*rows) + " do not match the queries " + describe(queries));
  }
  if (queries.device() == Device::CPU) {
    const int32_t* query_begin = layout.query_begin.data<int32_t>();
    const int32_t* key_length = layout.key_length.data<int32_t>();
    const int32_t* query_position = layout.query_position.data<int32_t>();
    for (int64_t s = 0; s < layout.sequences(); ++s) {
      const int64_t queries_here = query_begin[s + 1] - query_begin[s];
      if (queries_here > 0 && (query_position[s] < 0 || query_position[s] + queries_here > key_length[s]))
        fail(op, "sequence " + std::to_string(s) + " appends keys at positions " + std::to_string(query_position[s]) +
                     ".." + std::to_string(query_position[s] + queries_here - 1) + " outside its " +
                     std::to_string(key_length[s]) + " keys in key_cache " + describe(key_cache));
    }
  }
  if (queries.numel() == 0 || layout.sequences() == 0) return;
  ELEPHANT_DISPATCH(queries.device(),
                    attention_with_append(queries, new_keys, new_values, key_cache, value_cache, layout, args, out));
}

namespace {

// What both routing ops take: x [tokens, d] (floating), the F32 router weight [experts, d], an optional F32 bias
// [experts] and U8 activity flags [tokens], and the F32 probability [tokens] they write.
void check_routing(const char* op, const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active,
                   const Tensor& probability) {
  same_device(op, x, weight);
  same_device(op, x, probability);
  check_floating(op, x);
  check_dtype(op, weight, DType::F32, "the router weight");
  check_dtype(op, probability, DType::F32, "probability");
  const int64_t tokens = x.rank() == 2 ? x.dim(0) : -1;
  if (tokens < 0 || weight.rank() != 2 || weight.dim(1) != x.dim(1) || probability.shape() != Shape{tokens})
    fail(op, "x " + describe(x) + ", weight " + describe(weight) + ", probability " + describe(probability));
  if (bias && (bias->device() != x.device() || bias->dtype() != DType::F32 || bias->shape() != Shape{weight.dim(0)}))
    fail(op, "bias " + describe(*bias) + " for " + std::to_string(weight.dim(0)) + " experts");
  if (active && (active->device() != x.device() || active->dtype() != DType::U8 || active->shape() != Shape{tokens}))
    fail(op, "activity flags " + describe(*active) + " for " + std::to_string(tokens) + " tokens");
}

}  // namespace

void route_top1(const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active, Tensor& expert,
                Tensor& probability) {
  check_routing("route_top1", x, weight, bias, active, probability);
  same_device("route_top1", x, expert);
  check_dtype("route_top1", expert, DType::I32, "expert");
  if (expert.shape() != Shape{x.dim(0)}) fail("route_top1", "expert " + describe(expert) + " for x " + describe(x));
  if (x.dim(0) == 0) return;
  ELEPHANT_DISPATCH(x.device(), route_top1(x, weight, bias, active, expert, probability));
}

void route_and_sort_top1(const Tensor& x, const Tensor& weight, const Tensor* bias, const Tensor* active,
                         Tensor& probability, Tensor& sorted_rows, Tensor& offsets) {
  check_routing("route_and_sort_top1", x, weight, bias, active, probability);
  same_device("route_and_sort_top1", x, sorted_rows);
  same_device("route_and_sort_top1", x, offsets);
  check_dtype("route_and_sort_top1", sorted_rows, DType::I32, "sorted_rows");
  check_dtype("route_and_sort_top1", offsets, DType::I32, "offsets");
  if (sorted_rows.shape() != Shape{x.dim(0)} || offsets.shape() != Shape{weight.dim(0) + 1})
    fail("route_and_sort_top1", "sorted_rows " + describe(sorted_rows) + ", offsets " + describe(offsets) + " for x " +
                                    describe(x) + " and " + std::to_string(weight.dim(0)) + " experts");
#ifdef ELEPHANT_WITH_CUDA
  if (x.device() == Device::CUDA &&
      cuda::route_and_sort_top1(x, weight, bias, active, probability, sorted_rows, offsets))
    return;
#endif
  Tensor expert = Tensor::empty({x.dim(0)}, DType::I32, x.device());
  route_top1(x, weight, bias, active, expert, probability);
  sort_by_expert(expert, static_cast<int>(weight.dim(0)), sorted_rows, offsets);
}

void sort_by_expert(const Tensor& expert, int num_experts, Tensor& sorted_rows, Tensor& offsets) {
  same_device("sort_by_expert", expert, sorted_rows);
  same_device("sort_by_expert", expert, offsets);
  check_dtype("sort_by_expert", expert, DType::I32, "expert");
  check_dtype("sort_by_expert", sorted_rows, DType::I32, "sorted_rows");
  check_dtype("sort_by_expert", offsets, DType::I32, "offsets");
  if (num_experts <= 0 || expert.rank() != 1 || sorted_rows.shape() != expert.shape() ||
      offsets.shape() != Shape{num_experts + 1})
    fail("sort_by_expert", "expert " + describe(expert) + ", sorted_rows " + describe(sorted_rows) + ", offsets " +
                               describe(offsets) + " for " + std::to_string(num_experts) + " experts");
  ELEPHANT_DISPATCH(expert.device(), sort_by_expert(expert, num_experts, sorted_rows, offsets));
}

namespace {

// The checks every grouped GEMM shares; describe_weights() names the stack [experts, n, k] (dense or quantized) in
// a message, and runs only when a check fails. Returns false when there is nothing to compute.
template <typename DescribeWeights>
bool check_grouped_gemm(const Tensor& a, const Shape& weights_shape, Device weights_device,
                        DescribeWeights&& describe_weights, const Tensor& offsets, const Tensor& out,
                        const GroupedGemmArgs& args) {
  same_device("grouped_gemm", a, offsets);
  same_device("grouped_gemm", a, out);
  check_floating("grouped_gemm", a);
  check_dtype("grouped_gemm", offsets, DType::I32, "offsets");
  const auto shapes = [&] {
    return "a " + describe(a) + ", weights " + describe_weights() + ", offsets " + describe(offsets) + ", out " +
           describe(out);
  };
  if (weights_device != a.device()) fail("grouped_gemm", "tensors on different devices: " + shapes());
  if (a.rank() != 2 || weights_shape.size() != 3 || out.rank() != 2) fail("grouped_gemm", shapes());
  // The product's rows: a's, or as many as a_rows names; out's rows, or as many as out_rows names.
  const int64_t product_rows = args.a_rows ? args.a_rows->dim(0) : a.dim(0);
  const int64_t out_rows = args.out_rows ? args.out_rows->dim(0) : out.dim(0);
  if (weights_shape[2] != a.dim(1) || product_rows != out_rows || out.dim(1) != weights_shape[1] ||
      offsets.shape() != Shape{weights_shape[0] + 1} || out.dtype() != a.dtype())
    fail("grouped_gemm", shapes());
  const auto check_rows = [&](const Tensor* rows, const char* name) {
    if (rows && (rows->device() != a.device() || rows->dtype() != DType::I32 || rows->rank() != 1))
      fail("grouped_gemm", std::string(name) + " " + describe(*rows) + " for " + shapes());
  };
  check_rows(args.a_rows, "a_rows");
  check_rows(args.out_rows, "out_rows");
  if (!args.out_rows != !args.out_scale ||
      (args.out_scale && (args.out_scale->device() != a.device() || args.out_scale->dtype() != DType::F32 ||
                          args.out_scale->shape() != Shape{out.dim(0)})))
    fail("grouped_gemm", "out_rows and out_scale (F32 [rows of out]) go together; got out_scale " +
                             (args.out_scale ? describe(*args.out_scale) : std::string("none")) + " for " + shapes());
  if (args.bias && (args.bias->device() != a.device() || args.bias->dtype() != a.dtype() ||
                    args.bias->shape() != Shape{weights_shape[0], weights_shape[1]}))
    fail("grouped_gemm", "bias " + describe(*args.bias) + " for " + shapes());
  if (product_rows == 0) return false;
  if (a.device() == Device::CPU) {  // on a device the indices are trusted: reading them would synchronize
    const int64_t count = offsets.data<int32_t>()[offsets.dim(0) - 1];
    if (count < 0 || count > product_rows)
      fail("grouped_gemm", "offsets end at " + std::to_string(count) + " of " + std::to_string(product_rows) + " rows");
    if (args.a_rows)
      if (const int64_t bad = first_index_outside(*args.a_rows, count, a.dim(0)); bad >= 0)
        fail("grouped_gemm",
             "a_rows names row " + std::to_string(args.a_rows->data<int32_t>()[bad]) + " of " + describe(a));
    if (args.out_rows)
      if (const int64_t bad = first_index_outside(*args.out_rows, count, out.dim(0)); bad >= 0)
        fail("grouped_gemm",
             "out_rows names row " + std::to_string(args.out_rows->data<int32_t>()[bad]) + " of " + describe(out));
  }
  return true;
}

}  // namespace

namespace {

// A dense grouped GEMM's checks; false when there is nothing to compute.
bool check_dense_grouped_gemm(const Tensor& a, const Tensor& weights, const Tensor& offsets, const Tensor& out,
                              const GroupedGemmArgs& args) {
  if (weights.dtype() != a.dtype())
    fail("grouped_gemm", "weights " + describe(weights) + " for a " + describe(a) + " (the same dtype)");
  return check_grouped_gemm(
      a, weights.shape(), weights.device(), [&] { return describe(weights); }, offsets, out, args);
}

}  // namespace

void grouped_gemm(const Tensor& a, const Tensor& weights, const Tensor& offsets, Tensor& out,
                  const GroupedGemmArgs& args) {
  if (!check_dense_grouped_gemm(a, weights, offsets, out, args)) return;
  ELEPHANT_DISPATCH(a.device(), grouped_gemm(a, weights, offsets, out, args));
}

void grouped_gemm(const Tensor& a, const QuantizedTensor& weights, const Tensor& offsets, Tensor& out,
                  const GroupedGemmArgs& args) {
  check_quantized(weights, "grouped_gemm weights");
  const auto what = [&] {
    return "int" + std::to_string(weights.bits) + " " + describe(weights.values) + " with scales " +
           describe(weights.scales);
  };
  if (weights.scales.device() != weights.device()) fail("grouped_gemm", "weights on two devices: " + what());
  if (!check_grouped_gemm(a, weights.shape, weights.device(), what, offsets, out, args)) return;
  ELEPHANT_DISPATCH(a.device(), grouped_gemm(a, weights, offsets, out, args));
}

void grouped_gemm_pair(const Tensor& a, const Tensor& first, const Tensor& second, const Tensor& offsets,
                       Tensor& middle, Tensor& out, const GroupedGemmArgs& first_args,
                       const GroupedGemmArgs& second_args) {
  const bool first_rows = check_dense_grouped_gemm(a, first, offsets, middle, first_args);
  const bool second_rows = check_dense_grouped_gemm(middle, second, offsets, out, second_args);
  if (!first_rows || !second_rows) {  // one of them may still have rows: as the two calls would run
    if (first_rows) grouped_gemm(a, first, offsets, middle, first_args);
    if (second_rows) grouped_gemm(middle, second, offsets, out, second_args);
    return;
  }
  ELEPHANT_DISPATCH(a.device(), grouped_gemm_pair(a, first, second, offsets, middle, out, first_args, second_args));
}

void topk(const Tensor& x, int k, Tensor& values, Tensor& indices) {
  same_device("topk", x, values);
  same_device("topk", x, indices);
  check_dtype("topk", x, DType::F32, "x");
  check_dtype("topk", values, DType::F32, "values");
  check_dtype("topk", indices, DType::I32, "indices");
  if (x.rank() != 2 || k < 1 || k > kMaxTopK || k > x.dim(1) || values.shape() != Shape{x.dim(0), k} ||
      indices.shape() != Shape{x.dim(0), k})
    fail("topk", "k " + std::to_string(k) + " of x " + describe(x) + " into values " + describe(values) + ", indices " +
                     describe(indices));
  if (x.dim(0) == 0) return;
  ELEPHANT_DISPATCH(x.device(), topk(x, k, values, indices));
}

void add_row_values(Tensor& x, const Tensor& row_values) {
  same_device("add_row_values", x, row_values);
  check_dtype("add_row_values", x, DType::F32, "x");
  check_dtype("add_row_values", row_values, DType::F32, "row_values");
  if (x.rank() != 2 || row_values.shape() != Shape{x.dim(0)})
    fail("add_row_values", "x " + describe(x) + ", row_values " + describe(row_values));
  if (x.numel() == 0) return;
  ELEPHANT_DISPATCH(x.device(), add_row_values(x, row_values));
}

void fill_column(Tensor& x, int64_t column, float value) {
  check_dtype("fill_column", x, DType::F32, "x");
  if (x.rank() != 2 || column < 0 || column >= x.dim(1))
    fail("fill_column", "column " + std::to_string(column) + " of " + describe(x));
  if (x.dim(0) == 0) return;
  ELEPHANT_DISPATCH(x.device(), fill_column(x, column, value));
}

void beam_candidates(const Tensor& logits, const Tensor& row_values, int beam_size, int64_t excluded, int k,
                     Tensor& values, Tensor& indices) {
  const std::string op = "beam_candidates";
  same_device(op, logits, row_values);
  same_device(op, logits, values);
  same_device(op, logits, indices);
  check_dtype(op, logits, DType::F32, "logits");
  check_dtype(op, row_values, DType::F32, "row_values");
  check_dtype(op, values, DType::F32, "values");
  check_dtype(op, indices, DType::I32, "indices");
  if (logits.rank() != 2 || beam_size < 1 || logits.dim(0) % beam_size != 0 ||
      row_values.shape() != Shape{logits.dim(0)} || excluded < -1 || excluded >= logits.dim(1) || k < 1 ||
      k > kMaxTopK || k > beam_size * logits.dim(1) || logits.dim(1) * beam_size > INT32_MAX)
    fail(op, "logits " + describe(logits) + " in sources of " + std::to_string(beam_size) + " beams, row_values " +
                 describe(row_values) + ", excluded " + std::to_string(excluded) + ", k " + std::to_string(k));
  const Shape out{logits.dim(0) / beam_size, k};
  if (values.shape() != out || indices.shape() != out)
    fail(op, "values " + describe(values) + ", indices " + describe(indices) + " for " + shape_string(out));
  if (logits.dim(0) == 0) return;
#ifdef ELEPHANT_WITH_CUDA
  if (logits.device() == Device::CUDA &&
      cuda::beam_candidates(logits, row_values, beam_size, excluded, k, values, indices))
    return;
#endif
  // Everywhere else the ops one by one: the reference the fused kernel equals bit for bit.
  Tensor scores = Tensor::empty(logits.shape(), DType::F32, logits.device());
  log_softmax(logits, scores);
  if (excluded >= 0) fill_column(scores, excluded, -INFINITY);
  add_row_values(scores, row_values);
  topk(scores.reshape({logits.dim(0) / beam_size, beam_size * logits.dim(1)}), k, values, indices);
}

void greedy_advance(const Tensor& best, int32_t eos, int32_t pad, Tensor& tokens, Tensor& finished, Tensor& lengths,
                    Tensor& history) {
  for (const Tensor* t : std::initializer_list<const Tensor*>{&tokens, &finished, &lengths, &history})
    same_device("greedy_advance", best, *t);
  check_dtype("greedy_advance", best, DType::I32, "best");
  check_dtype("greedy_advance", tokens, DType::I32, "tokens");
  check_dtype("greedy_advance", finished, DType::U8, "finished");
  check_dtype("greedy_advance", lengths, DType::I32, "lengths");
  check_dtype("greedy_advance", history, DType::I32, "history");
  const int64_t rows = best.rank() == 1 ? best.dim(0) : -1;
  if (rows < 0 || tokens.shape() != Shape{rows} || finished.shape() != Shape{rows} || lengths.shape() != Shape{rows} ||
      history.rank() != 2 || history.dim(0) != rows)
    fail("greedy_advance", "best " + describe(best) + ", tokens " + describe(tokens) + ", finished " +
                               describe(finished) + ", lengths " + describe(lengths) + ", history " +
                               describe(history));
  if (rows == 0) return;
  if (best.device() == Device::CPU)
    for (int64_t r = 0; r < rows; ++r)
      if (!finished.data<uint8_t>()[r] && lengths.data<int32_t>()[r] >= history.dim(1))
        fail("greedy_advance", "row " + std::to_string(r) + " has no room left in " + describe(history));
  ELEPHANT_DISPATCH(best.device(), greedy_advance(best, eos, pad, tokens, finished, lengths, history));
}

namespace {

// Every tensor of a beam state of `sources` sources has its dtype and shape, on `device`.
void check_beam_state(const std::string& op, const BeamState& state, int64_t sources, int64_t beams, int64_t length,
                      Device device) {
  const struct {
    const Tensor& tensor;
    const char* name;
    DType dtype;
    Shape shape;
  } expected[] = {
      {state.scores, "scores", DType::F32, {sources, beams}},
      {state.history_tokens, "history_tokens", DType::I32, {sources, length, beams}},
      {state.history_parents, "history_parents", DType::I32, {sources, length, beams}},
      {state.finished_scores, "finished_scores", DType::F32, {sources, beams}},
      {state.finished_lengths, "finished_lengths", DType::I32, {sources, beams}},
      {state.finished_last, "finished_last", DType::I32, {sources, beams}},
      {state.finished_parents, "finished_parents", DType::I32, {sources, beams}},
      {state.can_improve, "can_improve", DType::U8, {sources}},
      {state.next_tokens, "next_tokens", DType::I32, {sources, beams}},
      {state.next_rows, "next_rows", DType::I32, {sources, beams}},
  };
  for (const auto& e : expected)
    if (!e.tensor.defined() || e.tensor.dtype() != e.dtype || e.tensor.shape() != e.shape ||
        e.tensor.device() != device)
      fail(op, std::string("state.") + e.name + " must be " + dtype_name(e.dtype) + shape_string(e.shape) + "@" +
                   to_string(device) + ", got " + (e.tensor.defined() ? describe(e.tensor) : "an undefined tensor"));
}

}  // namespace

void beam_advance(const Tensor& values, const Tensor& indices, int step, const BeamOptions& options, BeamState& state) {
  same_device("beam_advance", values, indices);
  check_dtype("beam_advance", values, DType::F32, "values");
  check_dtype("beam_advance", indices, DType::I32, "indices");
  const int64_t candidates = static_cast<int64_t>(options.beam_size) * options.vocab;
  if (options.beam_size < 1 || options.vocab < 1 || candidates > INT32_MAX || options.max_length < 1)
    fail("beam_advance", std::to_string(options.beam_size) + " beams over a vocabulary of " +
                             std::to_string(options.vocab) + ", max_length " + std::to_string(options.max_length));
  if (step < 0 || step >= options.max_length)
    fail("beam_advance", "step " + std::to_string(step) + " outside [0, " + std::to_string(options.max_length) + ")");
  if (values.rank() != 2 || values.dim(1) < 1 || indices.shape() != values.shape())
    fail("beam_advance", "values " + describe(values) + ", indices " + describe(indices) +
                             ": expected [sources, candidates] each, at least one candidate");
  const int64_t sources = values.dim(0);
  check_beam_state("beam_advance", state, sources, options.beam_size, options.max_length, values.device());
  if (sources == 0) return;
  // An index < 0 ends a source's candidates. One past the beams is an error on the CPU; on a device, where the
  // host does not read them, it ends them too.
  if (values.device() == Device::CPU)
    for (int64_t i = 0; i < indices.numel(); ++i)
      if (indices.data<int32_t>()[i] >= candidates)
        fail("beam_advance", "candidate " + std::to_string(indices.data<int32_t>()[i]) + " at flat position " +
                                 std::to_string(i) + " of " + describe(indices) + " outside the " +
                                 std::to_string(candidates) + " of " + std::to_string(options.beam_size) + " beams x " +
                                 std::to_string(options.vocab) + " tokens");
  ELEPHANT_DISPATCH(values.device(), beam_advance(values, indices, step, options, state));
}

void beam_best_tokens(const BeamState& state, const Tensor& sources, Tensor& ids, Tensor& lengths) {
  if (state.can_improve.rank() != 1 || state.scores.rank() != 2 || state.history_tokens.rank() != 3)
    fail("beam_best_tokens", "the beam state is not started");
  const Device device = state.can_improve.device();
  check_beam_state("beam_best_tokens", state, state.sources(), state.scores.dim(1), state.history_tokens.dim(1),
                   device);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&sources, &ids, &lengths})
    if (t->device() != device) fail("beam_best_tokens", describe(*t) + " is not on the state's " + to_string(device));
  check_dtype("beam_best_tokens", sources, DType::I32, "sources");
  check_dtype("beam_best_tokens", ids, DType::I32, "ids");
  check_dtype("beam_best_tokens", lengths, DType::I32, "lengths");
  const int64_t count = sources.rank() == 1 ? sources.dim(0) : -1;
  if (count < 0 || ids.shape() != Shape{count, state.history_tokens.dim(1)} || lengths.shape() != Shape{count})
    fail("beam_best_tokens", "sources " + describe(sources) + ", ids " + describe(ids) + ", lengths " +
                                 describe(lengths) + " for a history of " +
                                 std::to_string(state.history_tokens.dim(1)) + " steps");
  if (count == 0) return;
  if (const int64_t bad = first_index_outside(sources, count, state.sources()); bad >= 0)
    throw std::out_of_range("beam_best_tokens: source " + std::to_string(sources.data<int32_t>()[bad]) +
                            " outside [0, " + std::to_string(state.sources()) + ")");
  ELEPHANT_DISPATCH(device, beam_best_tokens(state, sources, ids, lengths));
}

}  // namespace elephant::ops
