#!/usr/bin/env python3
"""Build a tiny fake corpus + SentencePiece tokenizer in the real corpus' layout, for smoke tests.

Each "language" is a word-for-word cipher of English (a fixed random word dictionary per language, with the word
order reversed for some), so a tiny model can visibly lower its loss in a few dozen steps. ja and zh_CN use CJK
characters without spaces, like the real ones.

    python3 tools/train/make_fake_corpus.py --out /tmp/fake
    -> /tmp/fake/corpus/{train,valid}.tsv.gz, /tmp/fake/test/<lang>.tsv, /tmp/fake/spiece.model
"""
import argparse
import gzip
import os
import random

import sentencepiece as spm

LANGS = ["de", "fr", "es", "it", "pt_BR", "ru", "uk", "sv", "ja", "zh_CN"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/fake")
    ap.add_argument("--train-pairs", type=int, default=1500, help="pairs per language")
    ap.add_argument("--valid-pairs", type=int, default=60)
    ap.add_argument("--test-pairs", type=int, default=20)
    ap.add_argument("--vocab-size", type=int, default=600)
    ap.add_argument("--words", type=int, default=60, help="English vocabulary size (smaller = easier to learn)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    def word(alphabet, lo, hi):
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))

    latin = "abcdefghijklmnoprstuvwyzäöüéèàñçå"
    cyrillic = "абвгдежзийклмнопрстуфхцчшщыэюяії"
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 300)]
    kana = [chr(c) for c in range(0x3041, 0x3041 + 80)]
    english = sorted({word("abcdefghijklmnopqrstuvwxyz", 2, 7) for _ in range(args.words)})
    dicts = {}
    for lang in LANGS:
        if lang == "ja":
            dicts[lang] = {w: word(cjk[:150], 1, 2) + word(kana, 0, 2) for w in english}
        elif lang == "zh_CN":
            dicts[lang] = {w: word(cjk[150:], 1, 2) for w in english}
        elif lang in ("ru", "uk"):
            dicts[lang] = {w: word(cyrillic, 2, 9) for w in english}
        else:
            dicts[lang] = {w: word(latin, 2, 9) for w in english}

    def sentence():
        n = rng.randint(2, 10)
        words = [rng.choice(english) for _ in range(n)]
        s = " ".join(words)
        return s[0].upper() + s[1:] + rng.choice([".", ".", "?", "!"]), words

    def translate(lang, words, punct):
        out = [dicts[lang][w] for w in words]
        if lang in ("de", "ja", "ru"):
            out = out[::-1]
        sep = "" if lang in ("ja", "zh_CN") else " "
        end = {"ja": "。", "zh_CN": "。"}.get(lang, punct) if punct == "." else punct
        return sep.join(out) + end

    def pairs(lang, n):
        rows = []
        for _ in range(n):
            s, words = sentence()
            rows.append((s, translate(lang, words, s[-1])))
        return rows

    os.makedirs(f"{args.out}/corpus", exist_ok=True)
    os.makedirs(f"{args.out}/test", exist_ok=True)
    text = []
    for split, n in (("train", args.train_pairs), ("valid", args.valid_pairs)):
        with gzip.open(f"{args.out}/corpus/{split}.tsv.gz", "wt", encoding="utf-8") as f:
            for lang in LANGS:
                for en, tgt in pairs(lang, n):
                    f.write(f"{lang}\t{en}\t{tgt}\n")
                    if split == "train":
                        text += [en, tgt]
    for lang in LANGS:
        with open(f"{args.out}/test/{lang}.tsv", "w", encoding="utf-8") as f:
            for en, tgt in pairs(lang, args.test_pairs):
                f.write(f"{en}\t{tgt}\n")

    # Same special-id layout as models/demo/spiece.model: pad 0, eos 1, unk 2, no bos, one piece per language tag.
    tags = [f"<2{lang}>" for lang in LANGS] + ["<2en>"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=f"{args.out}/spiece", vocab_size=args.vocab_size,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        user_defined_symbols=tags, input_sentence_size=len(text), shuffle_input_sentence=False,
        num_threads=2, minloglevel=2)
    print(f"wrote {args.out}: {len(LANGS)} languages x {args.train_pairs} train pairs, spiece {args.vocab_size} pieces")


if __name__ == "__main__":
    main()
