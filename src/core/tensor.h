#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "elephant/device.h"

namespace elephant {

using Shape = std::vector<int64_t>;

std::string shape_string(const Shape& shape);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& shape);

// A dense row-major tensor on the CPU or a CUDA device. Copies share the storage (like a view); `clone()`
// copies the data. The storage is either owned (64-byte aligned heap memory, or CUDA memory from the
// stream-ordered pool) or borrowed from an owner that is kept alive, such as a memory-mapped checkpoint.
// data<T>() of a CUDA tensor is a device pointer.
class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor borrow(void* data, const Shape& shape, DType dtype, std::shared_ptr<const void> owner);
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = Device::CPU);

  bool defined() const { return defined_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int axis) const;  // negative axes count from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  template <typename T>
  T* data();
  template <typename T>
  const T* data() const;
  void* raw() { return data_; }
  const void* raw() const { return data_; }

  // Same storage, new shape with the same element count (one dimension may be -1).
  Tensor reshape(Shape shape) const;
  // Rows [begin, begin + count) of the first dimension, sharing the storage.
  Tensor narrow(int64_t begin, int64_t count) const;
  Tensor clone() const;
  // A copy on `device` (this tensor itself when it is there already). A copy to the CPU waits for the device.
  Tensor to(Device device) const;
  // Copies `source` (same shape and dtype, any device) into this tensor's storage.
  void copy_from(const Tensor& source);
  // The elements as a host vector (copied from the device if needed).
  template <typename T>
  std::vector<T> to_vector() const;
  // A float32 copy of a CPU F32/F16/BF16 tensor (no copy when it already is float32).
  Tensor to_float() const;
  // A CPU copy converted to F32, F16 or BF16 (rounding to nearest even). CUDA tensors convert with ops::convert.
  Tensor to_dtype(DType dtype) const;

 private:
  Tensor(void* data, Shape shape, DType dtype, Device device, std::shared_ptr<const void> owner)
      : data_(data),
        shape_(std::move(shape)),
        dtype_(dtype),
        device_(device),
        owner_(std::move(owner)),
        defined_(true) {}
  void check_dtype(DType expected) const;

  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  std::shared_ptr<const void> owner_;
  bool defined_ = false;
};

template <typename T>
T* Tensor::data() {
  check_dtype(dtype_of<T>());
  return static_cast<T*>(data_);
}

template <typename T>
const T* Tensor::data() const {
  check_dtype(dtype_of<T>());
  return static_cast<const T*>(data_);
}

}  // namespace elephant
