#pragma once

#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace elephant {

// A SentencePiece model (spiece.model). Copies share the loaded model; all methods are safe to call
// from several threads at once.
class Tokenizer {
 public:
  static Tokenizer load(const std::string& spiece_model_path);

  // Piece ids only; the caller appends EOS.
  std::vector<int> encode(const std::string& text) const;
  // Ids outside [0, size()) are skipped; control pieces (pad, eos) decode to nothing.
  std::string decode(const std::vector<int>& ids) const;

  // -1 when `piece` is not in the vocabulary (it would map to unk without being the unk piece).
  int piece_to_id(const std::string& piece) const;
  std::string id_to_piece(int id) const;  // empty for ids outside [0, size())

  int size() const;
  int eos_id() const;
  int pad_id() const;  // -1 when the model defines none
  int unk_id() const;

 private:
  explicit Tokenizer(std::shared_ptr<const sentencepiece::SentencePieceProcessor> processor, std::string path);

  std::shared_ptr<const sentencepiece::SentencePieceProcessor> processor_;
  std::string path_;
};

}  // namespace elephant
