#include "io/tokenizer.h"

#include <sentencepiece_processor.h>

#include <filesystem>

#include "elephant/error.h"

namespace elephant {

Tokenizer::Tokenizer(std::shared_ptr<const sentencepiece::SentencePieceProcessor> processor, std::string path)
    : processor_(std::move(processor)), path_(std::move(path)) {}

Tokenizer Tokenizer::load(const std::string& spiece_model_path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(spiece_model_path, error))
    throw ModelError(spiece_model_path + ": SentencePiece model not found");
  auto processor = std::make_shared<sentencepiece::SentencePieceProcessor>();
  const auto status = processor->Load(spiece_model_path);
  if (!status.ok()) throw ModelError(spiece_model_path + ": cannot load the SentencePiece model: " + status.ToString());
  if (processor->GetPieceSize() <= 0) throw ModelError(spiece_model_path + ": the SentencePiece model has no pieces");
  return Tokenizer(std::move(processor), spiece_model_path);
}

std::vector<int> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = processor_->Encode(text, &ids);
  if (!status.ok()) throw InputError(path_ + ": cannot tokenize input: " + status.ToString());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  const int piece_count = size();
  std::vector<int> known_ids;
  known_ids.reserve(ids.size());
  for (int id : ids)
    if (id >= 0 && id < piece_count) known_ids.push_back(id);
  std::string text;
  const auto status = processor_->Decode(known_ids, &text);
  if (!status.ok()) throw InputError(path_ + ": cannot decode ids: " + status.ToString());
  return text;
}

int Tokenizer::piece_to_id(const std::string& piece) const {
  const int id = processor_->PieceToId(piece);
  if (id == processor_->unk_id() && piece != processor_->IdToPiece(id)) return -1;
  return id;
}

std::string Tokenizer::id_to_piece(int id) const {
  if (id < 0 || id >= size()) return {};
  return processor_->IdToPiece(id);
}

int Tokenizer::size() const { return processor_->GetPieceSize(); }
int Tokenizer::eos_id() const { return processor_->eos_id(); }
int Tokenizer::pad_id() const { return processor_->pad_id(); }
int Tokenizer::unk_id() const { return processor_->unk_id(); }

}  // namespace elephant
