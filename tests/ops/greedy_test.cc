#include "ops/greedy.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "ops/device_helpers.h"

namespace elephant {
namespace {

struct GreedyRows {
  Tensor tokens, finished, lengths, history;
};

// Three rows: row 0 has one id already, row 1 is finished, row 2 is fresh; history has room for 3 ids.
GreedyRows start(Device device) {
  return {Tensor::from_vector(std::vector<int32_t>{7, 0, 9}, {3}, device),
          Tensor::from_vector(std::vector<uint8_t>{0, 1, 0}, {3}, device),
          Tensor::from_vector(std::vector<int32_t>{1, 2, 0}, {3}, device),
          Tensor::from_vector(std::vector<int32_t>{7, -5, -5, 4, 1, -5, -5, -5, -5}, {3, 3}, device)};
}

void advance(GreedyRows& g, const std::vector<int32_t>& best, Device device) {
  ops::greedy_advance(Tensor::from_vector(best, {3}, device), /*eos=*/1, /*pad=*/0, g.tokens, g.finished, g.lengths,
                      g.history);
}

TEST(GreedyTest, AppendsTakesNextInputAndFinishesOnEos) {
  GreedyRows g = start(Device::CPU);
  advance(g, {1, 3, 5}, Device::CPU);  // row 0 takes EOS, row 1 stays finished, row 2 appends 5
  EXPECT_EQ(g.tokens.to_vector<int32_t>(), (std::vector<int32_t>{1, 0, 5}));
  EXPECT_EQ(g.finished.to_vector<uint8_t>(), (std::vector<uint8_t>{1, 1, 0}));
  EXPECT_EQ(g.lengths.to_vector<int32_t>(), (std::vector<int32_t>{2, 2, 1}));
  EXPECT_EQ(g.history.to_vector<int32_t>(), (std::vector<int32_t>{7, 1, -5, 4, 1, -5, 5, -5, -5}));
  advance(g, {6, 6, 6}, Device::CPU);  // only row 2 is live
  EXPECT_EQ(g.tokens.to_vector<int32_t>(), (std::vector<int32_t>{0, 0, 6}));
  EXPECT_EQ(g.history.to_vector<int32_t>(), (std::vector<int32_t>{7, 1, -5, 4, 1, -5, 5, 6, -5}));
}

TEST(GreedyTest, RejectsAFullHistoryAndBadShapes) {
  GreedyRows g = start(Device::CPU);
  advance(g, {2, 2, 2}, Device::CPU);
  advance(g, {2, 2, 2}, Device::CPU);  // row 0 now holds 3 ids
  EXPECT_THROW(advance(g, {2, 2, 2}, Device::CPU), std::invalid_argument);
  GreedyRows h = start(Device::CPU);
  EXPECT_THROW(ops::greedy_advance(Tensor::zeros({2}, DType::I32), 1, 0, h.tokens, h.finished, h.lengths, h.history),
               std::invalid_argument);
  EXPECT_THROW(ops::greedy_advance(Tensor::zeros({3}, DType::I32), 1, 0, h.tokens, h.lengths, h.lengths, h.history),
               std::invalid_argument);  // finished must be U8
}

TEST(CudaGreedyTest, MatchesTheCpu) {
  ELEPHANT_REQUIRE_CUDA();
  GreedyRows cpu = start(Device::CPU), gpu = start(Device::CUDA);
  for (const std::vector<int32_t>& best : {std::vector<int32_t>{1, 3, 5}, std::vector<int32_t>{6, 6, 1}}) {
    advance(cpu, best, Device::CPU);
    advance(gpu, best, Device::CUDA);
    EXPECT_EQ(gpu.tokens.to_vector<int32_t>(), cpu.tokens.to_vector<int32_t>());
    EXPECT_EQ(gpu.finished.to_vector<uint8_t>(), cpu.finished.to_vector<uint8_t>());
    EXPECT_EQ(gpu.lengths.to_vector<int32_t>(), cpu.lengths.to_vector<int32_t>());
    EXPECT_EQ(gpu.history.to_vector<int32_t>(), cpu.history.to_vector<int32_t>());
  }
}

}  // namespace
}  // namespace elephant
