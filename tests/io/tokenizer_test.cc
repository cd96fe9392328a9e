#include "io/tokenizer.h"

#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "elephant/error.h"
#include "test_utils.h"

namespace elephant {
namespace {

const char* const training_sentences[] = {
    "The quick brown fox jumps over the lazy dog.",
    "A mixture of experts routes each token to one expert.",
    "Switch transformers scale to many experts with sparse routing.",
    "Translate English to German: the house is wonderful.",
    "Das Haus ist wunderbar und der Garten ist gross.",
    "The encoder reads the source sentence and the decoder writes the target.",
    "Each expert is a feed forward network with its own weights.",
    "Beam search keeps the best hypotheses at every step.",
    "Elephants never forget where the water is.",
    "Numbers like 12, 345 and 6789 appear in text too.",
};

// Trains a small unigram model with T5's special ids (pad 0, eos 1, unk 2, no bos) once for the suite.
class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    directory_ = std::make_unique<TempDir>();
    std::string corpus;
    for (int repeat = 0; repeat < 20; ++repeat)
      for (const char* sentence : training_sentences) corpus += std::string(sentence) + "\n";
    write_text_file(directory_->file("corpus.txt"), corpus);
    const auto status = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + directory_->file("corpus.txt") + " --model_prefix=" + directory_->file("spiece") +
        " --vocab_size=120 --model_type=unigram --character_coverage=1.0 --hard_vocab_limit=false"
        " --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1 --minloglevel=2");
    ASSERT_TRUE(status.ok()) << status.ToString();
    model_path_ = directory_->file("spiece.model");
  }

  static void TearDownTestSuite() { directory_.reset(); }

  static std::unique_ptr<TempDir> directory_;
  static std::string model_path_;
};

std::unique_ptr<TempDir> TokenizerTest::directory_;
std::string TokenizerTest::model_path_;

TEST_F(TokenizerTest, SpecialIds) {
  const Tokenizer tokenizer = Tokenizer::load(model_path_);
  EXPECT_EQ(tokenizer.pad_id(), 0);
  EXPECT_EQ(tokenizer.eos_id(), 1);
  EXPECT_EQ(tokenizer.unk_id(), 2);
  EXPECT_GT(tokenizer.size(), 20);
  EXPECT_LE(tokenizer.size(), 120);
}

TEST_F(TokenizerTest, EncodeDecodeRoundTrip) {
  const Tokenizer tokenizer = Tokenizer::load(model_path_);
  for (const std::string text : {"The quick brown fox jumps over the lazy dog.", "the experts route tokens",
                                 "Das Haus ist gross.", "12 and 345"}) {
    const std::vector<int> ids = tokenizer.encode(text);
    ASSERT_FALSE(ids.empty()) << text;
    for (int id : ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, tokenizer.size());
      EXPECT_NE(id, tokenizer.eos_id()) << "encode must not append EOS";
    }
    EXPECT_EQ(tokenizer.decode(ids), text);
  }
  EXPECT_TRUE(tokenizer.encode("").empty());
  EXPECT_EQ(tokenizer.decode({}), "");
}

TEST_F(TokenizerTest, DecodeSkipsOutOfRangeAndControlIds) {
  const Tokenizer tokenizer = Tokenizer::load(model_path_);
  std::vector<int> ids = tokenizer.encode("the lazy dog");
  const std::string text = tokenizer.decode(ids);
  ids.insert(ids.begin(), tokenizer.pad_id());
  ids.push_back(-1);
  ids.push_back(tokenizer.size());
  ids.push_back(tokenizer.size() + 100);  // like T5's <extra_id_N> ids beyond the SentencePiece vocabulary
  ids.push_back(tokenizer.eos_id());
  EXPECT_EQ(tokenizer.decode(ids), text);
}

TEST_F(TokenizerTest, UnknownCharactersMapToUnk) {
  const Tokenizer tokenizer = Tokenizer::load(model_path_);
  const std::vector<int> ids = tokenizer.encode("\xE8\xB1\xA1");  // a CJK character absent from training
  EXPECT_NE(std::find(ids.begin(), ids.end(), tokenizer.unk_id()), ids.end());
}

TEST_F(TokenizerTest, PieceToId) {
  const Tokenizer tokenizer = Tokenizer::load(model_path_);
  for (int id = 0; id < tokenizer.size(); ++id) EXPECT_EQ(tokenizer.piece_to_id(tokenizer.id_to_piece(id)), id);
  EXPECT_EQ(tokenizer.piece_to_id("</s>"), tokenizer.eos_id());
  EXPECT_EQ(tokenizer.piece_to_id("<pad>"), tokenizer.pad_id());
  EXPECT_EQ(tokenizer.piece_to_id("<unk>"), tokenizer.unk_id());
  EXPECT_EQ(tokenizer.piece_to_id("<2de>"), -1);
  EXPECT_EQ(tokenizer.piece_to_id("definitely-not-a-piece"), -1);
  EXPECT_EQ(tokenizer.id_to_piece(-1), "");
  EXPECT_EQ(tokenizer.id_to_piece(tokenizer.size()), "");
}

TEST_F(TokenizerTest, CopiesShareTheModel) {
  Tokenizer copy = Tokenizer::load(model_path_);
  const Tokenizer tokenizer = copy;
  copy = Tokenizer::load(model_path_);
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("the dog")), "the dog");
}

TEST(TokenizerLoadTest, MissingFile) {
  TempDir dir;
  const std::string path = dir.file("spiece.model");
  try {
    Tokenizer::load(path);
    FAIL() << "expected ModelError";
  } catch (const ModelError& error) {
    EXPECT_CONTAINS(error.what(), path);
  }
}

TEST(TokenizerLoadTest, UnreadableFile) {
  TempDir dir;
  const std::string path = dir.file("spiece.model");
  write_text_file(path, "this is not a serialized ModelProto \xFF\xFF\xFF");
  try {
    Tokenizer::load(path);
    FAIL() << "expected ModelError";
  } catch (const ModelError& error) {
    EXPECT_CONTAINS(error.what(), path + ": cannot load the SentencePiece model");
  }
  EXPECT_THROW(Tokenizer::load(dir.path()), ModelError);  // a directory, not a file
}

// The golden checkpoints' tokenizers (T5 conventions) load and round-trip.
TEST(TokenizerGoldensTest, RealSpieceModelsRoundTrip) {
  namespace fs = std::filesystem;
  std::vector<std::string> models;
  std::error_code error;
  for (fs::directory_iterator it(goldens_dir(), error), end; !error && it != end; it.increment(error)) {
    const fs::path model = it->path() / "model" / "spiece.model";
    if (fs::is_regular_file(model)) models.push_back(model.string());
  }
  ASSERT_FALSE(models.empty()) << "no " << goldens_dir() << "/*/model/spiece.model";
  for (const std::string& model : models) {
    SCOPED_TRACE(model);
    const Tokenizer tokenizer = Tokenizer::load(model);
    EXPECT_EQ(tokenizer.eos_id(), 1);
    EXPECT_EQ(tokenizer.pad_id(), 0);
    const std::string text = "The house is wonderful.";
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(text)), text);
    EXPECT_EQ(tokenizer.piece_to_id("<definitely-not-a-piece>"), -1);
  }
}

}  // namespace
}  // namespace elephant
