#include "core/tensor.h"

#include <cstring>
#include <sstream>
#include <stdexcept>

#include "core/device_memory.h"

namespace elephant {

std::string shape_string(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument("Tensor::empty: negative dimension in " + shape_string(shape));
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  void* data = device_allocate(device, bytes);
  std::shared_ptr<const void> owner(data, [device](const void* p) { device_free(device, const_cast<void*>(p)); });
  return Tensor(data, shape, dtype, device, std::move(owner));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  device_fill_zero(t.data_, device, t.nbytes());
  return t;
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, std::shared_ptr<const void> owner) {
  return Tensor(data, shape, dtype, Device::CPU, std::move(owner));
}

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw std::invalid_argument("Tensor::from_vector: " + std::to_string(values.size()) + " values for shape " +
                                shape_string(shape));
  Tensor t = empty(shape, dtype_of<T>(), device);
  device_copy(t.data_, device, values.data(), Device::CPU, values.size() * sizeof(T));
  return t;
}
template Tensor Tensor::from_vector(const std::vector<float>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int64_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<uint8_t>&, const Shape&, Device);

template <typename T>
std::vector<T> Tensor::to_vector() const {
  check_dtype(dtype_of<T>());
  std::vector<T> values(static_cast<size_t>(numel()));
  device_copy(values.data(), Device::CPU, data_, device_, nbytes());
  return values;
}
template std::vector<float> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;
template std::vector<uint8_t> Tensor::to_vector() const;

int64_t Tensor::dim(int axis) const {
  const int r = rank();
  const int a = axis < 0 ? axis + r : axis;
  if (a < 0 || a >= r)
    throw std::out_of_range("axis " + std::to_string(axis) + " out of range for shape " + shape_string(shape_));
  return shape_[a];
}

void Tensor::check_dtype(DType expected) const {
  if (dtype_ != expected)
    throw std::logic_error("tensor of dtype " + dtype_name(dtype_) + " accessed as " + dtype_name(expected));
}

Tensor Tensor::reshape(Shape shape) const {
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) throw std::invalid_argument("reshape: two -1 dimensions in " + shape_string(shape));
      infer = static_cast<int>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0)
      throw std::invalid_argument("reshape: -1 is ambiguous when viewing " + shape_string(shape_) + " as " +
                                  shape_string(shape));
    shape[infer] = numel() / known;
  }
  if (shape_numel(shape) != numel())
    throw std::invalid_argument("reshape: cannot view " + shape_string(shape_) + " as " + shape_string(shape));
  return Tensor(data_, std::move(shape), dtype_, device_, owner_);
}

Tensor Tensor::narrow(int64_t begin, int64_t count) const {
  if (rank() == 0 || begin < 0 || count < 0 || begin + count > shape_[0])
    throw std::out_of_range("narrow(" + std::to_string(begin) + ", " + std::to_string(count) + ") of " +
                            shape_string(shape_));
  Shape shape = shape_;
  shape[0] = count;
  const size_t row_bytes = shape_[0] ? nbytes() / static_cast<size_t>(shape_[0]) : 0;
  return Tensor(static_cast<char*>(data_) + begin * row_bytes, std::move(shape), dtype_, device_, owner_);
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device_);
  device_copy(t.data_, device_, data_, device_, nbytes());
  return t;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor t = empty(shape_, dtype_, device);
  device_copy(t.data_, device, data_, device_, nbytes());
  return t;
}

void Tensor::copy_from(const Tensor& source) {
  if (source.shape_ != shape_ || source.dtype_ != dtype_)
    throw std::invalid_argument("copy_from: " + dtype_name(source.dtype_) + shape_string(source.shape_) + " into " +
                                dtype_name(dtype_) + shape_string(shape_));
  device_copy(data_, device_, source.data_, source.device_, nbytes());
}

Tensor Tensor::to_dtype(DType dtype) const {
  if (device_ != Device::CPU) throw std::logic_error("to_dtype: CPU tensors only (ops::convert on CUDA)");
  if (dtype == dtype_) return *this;
  const Tensor source = to_float();
  if (dtype == DType::F32) return source;
  Tensor out = empty(shape_, dtype);
  const float* in = source.data<float>();
  auto* dst = static_cast<uint16_t*>(out.data_);
  const int64_t n = numel();
  if (dtype == DType::F16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(in[i]);
  } else if (dtype == DType::BF16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bfloat16(in[i]);
  } else {
    throw std::logic_error("to_dtype: unsupported dtype " + dtype_name(dtype));
  }
  return out;
}

Tensor Tensor::to_float() const {
  if (device_ != Device::CPU) throw std::logic_error("to_float: CPU tensors only");
  if (dtype_ == DType::F32) return *this;
  Tensor out = empty(shape_, DType::F32);
  const auto* in = static_cast<const uint16_t*>(data_);
  float* dst = out.data<float>();
  const int64_t n = numel();
  if (dtype_ == DType::F16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(in[i]);
  } else if (dtype_ == DType::BF16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bfloat16_to_float(in[i]);
  } else {
    throw std::logic_error("to_float: unsupported dtype " + dtype_name(dtype_));
  }
  return out;
}

}  // namespace elephant
