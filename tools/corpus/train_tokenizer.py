#!/usr/bin/env python3
"""Train the one shared SentencePiece model of the multilingual demo model.

Reads build/corpus/train.tsv.gz (from build_corpus.py) and writes
  models/demo/spiece.model      unigram, 8000 pieces, T5 ids (pad 0, eos 1, unk 2, no bos),
                                one user-defined piece per language tag (<2de> ... <2en>)
  models/demo/languages.json    the tags, the language names and the source format
  build/corpus/spiece.{model,vocab}, spiece_input.txt, tokenizer_stats.json (for inspection)

Training text, balanced across languages: for each of the 10 languages up to --per-lang distinct
target sentences, and up to --english distinct English sentences (English is one side of every
direction), drawn with a fixed seed; every drawn sentence goes to SentencePiece (no sampling there).

Tags: the source carries the target-language tag, "<2de> File not found" (en->de),
"<2en> Datei nicht gefunden" (de->en). Each tag is a single piece. With SentencePiece's dummy
prefix (on, as in T5), sp.encode("<2de> Hello") is [id("▁"), id("<2de>"), ...]: the whitespace
that SentencePiece puts in front of the text becomes a lone "▁" piece before the tag, and
sp.encode("<2de> Hello")[2:] == sp.encode("Hello"). --no-dummy-prefix trains without it
(then sp.encode("<2de> Hello") starts with the tag id, but a sentence's first word gets
pieces without "▁").

Usage: python3 tools/corpus/train_tokenizer.py [--repo DIR]
"""

import argparse
import collections
import gzip
import json
import os
import random
import statistics
import sys
import time
import unicodedata

import sentencepiece as spm

LANGS = ["de", "fr", "es", "it", "pt_BR", "ru", "uk", "sv", "ja", "zh_CN"]
NAMES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
         "pt_BR": "Portuguese (Brazil)", "ru": "Russian", "uk": "Ukrainian", "sv": "Swedish",
         "ja": "Japanese", "zh_CN": "Chinese (Simplified)", "en": "English"}
TAGS = {l: f"<2{l}>" for l in LANGS + ["en"]}
VOCAB_SIZE = 8000


def read_tsv(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            lang, en, tgt = line.rstrip("\n").split("\t")
            yield lang, en, tgt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--repo", default=os.path.abspath(os.path.join(here, "..", "..")))
    ap.add_argument("--per-lang", type=int, default=60000, help="target sentences per language")
    ap.add_argument("--english", type=int, default=70000, help="English sentences")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--character-coverage", type=float, default=0.9995)
    ap.add_argument("--min-char-count", type=int, default=3,
                    help="characters seen at least this often in the training split are always pieces")
    ap.add_argument("--no-dummy-prefix", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    args.repo = os.path.abspath(args.repo)
    corpus = os.path.join(args.repo, "build", "corpus")
    out_dir = os.path.join(args.repo, "models", "demo")
    os.makedirs(out_dir, exist_ok=True)

    targets = {l: set() for l in LANGS}
    english = set()
    for lang, en, tgt in read_tsv(os.path.join(corpus, "train.tsv.gz")):
        targets[lang].add(tgt)
        english.add(en)
    # Characters that occur --min-char-count times or more in the (distinct) training sentences
    # are required pieces. The coverage alone would drop many common CJK characters: CJK is a small
    # share of the mixed text, so 0.05 % of all characters is several occurrences of each rare
    # hanzi/kanji (七 "seven", 雪 "snow" fell out).
    char_count = collections.Counter()
    for pool in [english] + [targets[l] for l in LANGS]:
        for s in pool:
            char_count.update(unicodedata.normalize("NFKC", s))
    required = sorted(ch for ch, n in char_count.items()
                      if n >= args.min_char_count and not ch.isspace())
    print(f"{len(char_count)} distinct characters in the training split, {len(required)} required", flush=True)
    rng = random.Random(args.seed)
    sample = []
    drawn = {}
    for name, pool, n in [("en", english, args.english)] + [(l, targets[l], args.per_lang) for l in LANGS]:
        pool = sorted(pool)
        pick = pool if len(pool) <= n else rng.sample(pool, n)
        drawn[name] = len(pick)
        sample.extend(pick)
    rng.shuffle(sample)
    print("training sentences: " + " ".join(f"{k}:{v}" for k, v in drawn.items()) + f" (total {len(sample)})",
          flush=True)

    # Fixed relative paths: the model file records its training input and prefix, so a temporary
    # folder would make two runs differ byte-wise. The input stays in build/corpus for inspection.
    os.chdir(args.repo)
    txt = os.path.join("build", "corpus", "spiece_input.txt")
    prefix = os.path.join("build", "corpus", "spiece")
    with open(txt, "w", encoding="utf-8") as f:
        for s in sample:
            f.write(s + "\n")
    spm.SentencePieceTrainer.train(
        input=txt, model_prefix=prefix, model_type="unigram", vocab_size=VOCAB_SIZE,
        character_coverage=args.character_coverage, byte_fallback=False,
        normalization_rule_name="nmt_nfkc", add_dummy_prefix=not args.no_dummy_prefix,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        user_defined_symbols=[TAGS[l] for l in LANGS + ["en"]], required_chars="".join(required),
        input_sentence_size=len(sample) + 1, shuffle_input_sentence=False,
        num_threads=2, minloglevel=1)
    with open(prefix + ".model", "rb") as f:
        model = f.read()
    with open(os.path.join(out_dir, "spiece.model"), "wb") as f:
        f.write(model)
    with open(os.path.join(out_dir, "languages.json"), "w", encoding="utf-8") as f:
        json.dump({"tags": TAGS, "languages": NAMES, "source_format": "<2xx> sentence"}, f,
                  indent=2, ensure_ascii=False)
        f.write("\n")
    train_s = time.time() - t0

    # checks and facts
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "spiece.model"))
    assert sp.get_piece_size() == VOCAB_SIZE, sp.get_piece_size()
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    tag_ids = {l: sp.piece_to_id(t) for l, t in TAGS.items()}
    for l, t in TAGS.items():
        ids = sp.encode(f"{t} Hello world")
        assert tag_ids[l] != sp.unk_id() and sp.id_to_piece(tag_ids[l]) == t
        assert tag_ids[l] in ids[:2], (t, sp.encode(f"{t} Hello world", out_type=str))
        assert ids[ids.index(tag_ids[l]) + 1:] == sp.encode("Hello world"), t
    print(f"pieces {sp.get_piece_size()}; tag ids " + " ".join(f"{t}={i}" for t, i in
                                                            zip(TAGS.values(), tag_ids.values())))
    print(f'encode("<2de> Hello world") = {sp.encode("<2de> Hello world", out_type=str)} '
          f'= {sp.encode("<2de> Hello world")}')

    stats = {"pieces": sp.get_piece_size(), "tag_ids": tag_ids, "training_sentences": drawn,
             "character_coverage": args.character_coverage, "required_chars": len(required),
             "min_char_count": args.min_char_count, "add_dummy_prefix": not args.no_dummy_prefix,
             "train_seconds": round(train_s, 1), "valid": {}}
    side = {"en": []}
    side.update({l: [] for l in LANGS})
    for lang, en, tgt in read_tsv(os.path.join(corpus, "valid.tsv.gz")):
        side[lang].append(tgt)
        side["en"].append(en)
    side["en"] = sorted(set(side["en"]))
    print("\nvalid split     sents  tok/sent  chars/tok  sents with <unk>  <unk>/tokens")
    for l in ["en"] + LANGS:
        enc = sp.encode(side[l])
        ntok = [len(e) for e in enc]
        nunk = sum(e.count(sp.unk_id()) for e in enc)
        with_unk = sum(1 for e in enc if sp.unk_id() in e)
        chars = sum(len(s) for s in side[l])
        st = {"sentences": len(enc), "tokens_per_sentence": round(statistics.mean(ntok), 2),
              "chars_per_token": round(chars / sum(ntok), 2),
              "sentences_with_unk": with_unk, "unk_rate": round(nunk / sum(ntok), 5)}
        stats["valid"][l] = st
        print(f"{l:8s} {st['sentences']:10d} {st['tokens_per_sentence']:9.2f} {st['chars_per_token']:10.2f} "
              f"{with_unk:17d} {st['unk_rate']:12.5f}")
    with open(os.path.join(corpus, "tokenizer_stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1)
    print(f"\nwrote {out_dir}/spiece.model, languages.json; {time.time() - t0:.0f} s "
          f"(training {train_s:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
