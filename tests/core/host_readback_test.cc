#include "core/host_readback.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "ops/device_helpers.h"

namespace elephant {
namespace {

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const auto* data = static_cast<const uint8_t*>(t.raw());
  return std::vector<uint8_t>(data, data + t.nbytes());
}

TEST(HostReadback, CopiesACpuTensorAtOnce) {
  HostReadback readback;
  EXPECT_FALSE(readback.pending());
  EXPECT_FALSE(readback.wait().defined());  // nothing started
  Tensor source = Tensor::from_vector(std::vector<uint8_t>{0, 1, 0, 1, 1}, {5});
  readback.start(source);
  EXPECT_FALSE(readback.pending());
  source.data<uint8_t>()[0] = 7;  // after start(): not in the copy
  const Tensor& copy = readback.wait();
  EXPECT_EQ(copy.device(), Device::CPU);
  EXPECT_EQ(copy.dtype(), DType::U8);
  EXPECT_EQ(copy.shape(), Shape{5});
  EXPECT_EQ(copy.to_vector<uint8_t>(), (std::vector<uint8_t>{0, 1, 0, 1, 1}));
  // A larger tensor of another dtype and shape grows the buffer; an empty one is fine.
  readback.start(Tensor::from_vector(std::vector<int32_t>{1, -2, 3, -4, 5, -6}, {2, 3}));
  EXPECT_EQ(readback.wait().shape(), (Shape{2, 3}));
  EXPECT_EQ(readback.wait().to_vector<int32_t>(), (std::vector<int32_t>{1, -2, 3, -4, 5, -6}));
  readback.start(Tensor::empty({0}, DType::U8));
  EXPECT_EQ(readback.wait().numel(), 0);
  EXPECT_THROW(readback.start(Tensor()), std::invalid_argument);
}

// The copy sees the tensor as the work queued before start() leaves it, not the work queued after; a start() while a
// copy is pending replaces it.
TEST(HostReadback, CudaCopyIsOrderedOnTheStream) {
  ELEPHANT_REQUIRE_CUDA();
  const std::vector<uint8_t> before{1, 0, 1, 1}, after{0, 0, 1, 0};
  Tensor flags = Tensor::from_vector(before, {4}, Device::CUDA);
  const Tensor later = Tensor::from_vector(after, {4}, Device::CUDA);
  HostReadback readback;
  readback.start(flags);
  EXPECT_TRUE(readback.pending());
  flags.copy_from(later);  // queued after the copy
  const Tensor& copy = readback.wait();
  EXPECT_FALSE(readback.pending());
  EXPECT_EQ(copy.device(), Device::CPU);
  EXPECT_EQ(bytes_of(copy), before);
  readback.start(Tensor::from_vector(std::vector<uint8_t>(4096, 3), {4096}, Device::CUDA));  // grows the buffer
  readback.start(flags);                                                                     // replaces that copy
  EXPECT_EQ(bytes_of(readback.wait()), after);
  HostReadback moved(std::move(readback));
  moved.start(Tensor::from_vector(std::vector<int32_t>{5, 6}, {2}, Device::CUDA));
  EXPECT_EQ(moved.wait().to_vector<int32_t>(), (std::vector<int32_t>{5, 6}));
  moved.start(flags);  // destroyed while pending: waits
}

// Pinned memory is slow to make and free (~0.5 ms a buffer): a readback's buffer goes back to a pool when the
// readback goes, and the next readback of that size takes it.
TEST(HostReadback, CudaPinnedBufferOutlivesItsReadback) {
  ELEPHANT_REQUIRE_CUDA();
  const Tensor flags = Tensor::from_vector(std::vector<uint8_t>{1, 0, 1}, {3}, Device::CUDA);
  const void* first = nullptr;
  {
    HostReadback readback;
    readback.start(flags);
    first = readback.wait().raw();
  }
  HostReadback next;
  next.start(Tensor::from_vector(std::vector<uint8_t>{0, 1}, {2}, Device::CUDA));
  EXPECT_EQ(next.wait().raw(), first);
  EXPECT_EQ(bytes_of(next.wait()), (std::vector<uint8_t>{0, 1}));
  // A tensor the caller keeps holds its buffer: the next readback gets another.
  const Tensor kept = next.wait();
  next = HostReadback();
  HostReadback other;
  other.start(flags);
  EXPECT_NE(other.wait().raw(), kept.raw());
  EXPECT_EQ(bytes_of(kept), (std::vector<uint8_t>{0, 1}));
  EXPECT_EQ(bytes_of(other.wait()), (std::vector<uint8_t>{1, 0, 1}));
}

}  // namespace
}  // namespace elephant
