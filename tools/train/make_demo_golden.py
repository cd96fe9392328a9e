#!/usr/bin/env python3
"""The shipped demo model's CI check: 20 fixed test sentences (one per direction) translated by transformers.

Writes tests/demo/transformers_outputs.json, which tests/models/demo_model_test.cc compares the engine's CPU
output with, token for token and as text, greedy and beam 4. Rerun it whenever models/demo changes:

    python3 tools/train/make_demo_golden.py [--model models/demo] [--out tests/demo/transformers_outputs.json]
"""
import argparse
import json
import os
import sys

import sentencepiece as spm
import torch
import transformers
from transformers import SwitchTransformersForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluate import EOS, read_test, translate  # noqa: E402

LANGS = ["de", "fr", "es", "it", "pt_BR", "ru", "uk", "sv", "ja", "zh_CN"]


def pick(sentences):
    """The first test sentence of 4 to 12 words that starts with a letter and has no format specifiers or markup:
    an ordinary UI sentence."""
    for s in sentences:
        if 4 <= len(s.split()) <= 12 and s[0].isalpha() and not any(c in s for c in "%$<>{}\\"):
            return s
    raise SystemExit("no suitable sentence")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--test-dir", default="data/test")
    ap.add_argument("--out", default="tests/demo/transformers_outputs.json")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = SwitchTransformersForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.model, "spiece.model"))
    cases = []
    for lang in LANGS:
        en, target = read_test(os.path.join(args.test_dir, f"{lang}.tsv"))
        for source, tgt in ((pick(en), lang), (pick(target), "en")):
            case = {"target_lang": tgt, "source": source}
            for beams in (1, 4):
                text, ids = translate(model, sp, [source], sp.piece_to_id(f"<2{tgt}>"), beams, 1,
                                      args.max_new_tokens, "cpu", return_ids=True)
                case[f"beam{beams}"] = {"text": text[0], "ids": [i for i in ids[0] if i != EOS]}
            cases.append(case)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"model": args.model, "max_length": args.max_new_tokens,
                   "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                   "cases": cases}, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
