#!/usr/bin/env python3
"""Translate the test split with transformers (the reference implementation) and score it.

For every language X with data/test/X.tsv (`english<TAB>target`) it runs both directions, en-X and X-en, with
greedy search and beam search (`--beams 1,4`), in float32 on CUDA when available, and writes to --out:

    src.<src>-<tgt>.txt         the sources as plain text (no tag): feed them to the engine with --target-lang <tgt>
    ref.<src>-<tgt>.txt         the references
    hyp.<beam>.<src>-<tgt>.txt  the translations: sp.decode(generated ids) without decoder-start/eos/pad
    scores.json                 BLEU/chrF per direction and beam (see score.py), timings, versions

Source ids are `[<2tgt> id] + sp.encode(line) + [eos]`, as the engine builds them for `--target-lang`. Generation:
`generate(num_beams=B, max_new_tokens=64, do_sample=False)` (beam: length_penalty 1.0, early_stopping False,
transformers' defaults), which corresponds to `elephant translate --beam-size B --max-length 64`. An empty source
line gives an empty translation, as in the engine.

    python3 tools/train/evaluate.py build/train/model --out build/eval/hf
"""
import argparse
import json
import os
import sys
import time

import sentencepiece as spm
import torch
import transformers
from transformers import SwitchTransformersForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import score  # noqa: E402
from cli_help import HelpFormatter  # noqa: E402

PAD, EOS = 0, 1


def read_test(path):
    en, tgt = [], []
    for n, line in enumerate(score.read_lines(path), 1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise SystemExit(f"{path}:{n}: expected english<TAB>target, got {len(parts)} fields")
        en.append(parts[0])
        tgt.append(parts[1])
    return en, tgt


@torch.no_grad()
def translate(model, sp, lines, tag, beams, batch_size, max_new_tokens, device, return_ids=False):
    """Batched generation, batches of similar source length (longest first); returns texts in input order
    (and, with return_ids, the generated ids through the EOS, without the decoder start token)."""
    pieces = sp.encode(lines, out_type=int)
    sources = [[tag] + p + [EOS] if p else None for p in pieces]
    order = sorted((i for i, s in enumerate(sources) if s is not None), key=lambda i: -len(sources[i]))
    out = [""] * len(lines)
    out_ids = [[] for _ in lines]
    kwargs = dict(num_beams=beams, max_new_tokens=max_new_tokens, do_sample=False)
    if beams > 1:
        kwargs.update(length_penalty=1.0, early_stopping=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(sources[i]) for i in idx)
        ids = torch.full((len(idx), width), PAD, dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(sources[i])] = torch.tensor(sources[i])
        ids = ids.to(device)
        gen = model.generate(input_ids=ids, attention_mask=(ids != PAD).long(), **kwargs).cpu().tolist()
        for row, i in enumerate(idx):
            toks = gen[row][1:]  # drop the decoder start token (pad id)
            if EOS in toks:
                toks = toks[:toks.index(EOS) + 1]
            out_ids[i] = toks
            out[i] = sp.decode([t for t in toks if t not in (PAD, EOS)])
    return (out, out_ids) if return_ids else out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--test-dir", default="data/test", help="folder of <lang>.tsv: english<TAB>target")
    ap.add_argument("--out", default=None, help="default: build/eval/<model dir name>")
    ap.add_argument("--langs", default=None, help="comma-separated (default: every <lang>.tsv in --test-dir)")
    ap.add_argument("--beams", default="1,4", help="beam sizes to run (1 = greedy)")
    ap.add_argument("--batch-size", type=int, default=200, help="sentences per generate() call")
    ap.add_argument("--max-new-tokens", type=int, default=64,
                    help="generated-token bound (EOS included), like the engine's --max-length")
    ap.add_argument("--max-sentences", type=int, default=None, help="first N test lines per language (quick runs)")
    ap.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    ap.add_argument("--ja-tokenize", default="auto", choices=["auto", "char", "ja-mecab"],
                    help="BLEU tokenizer for ja targets (auto: ja-mecab if installed, else char)")
    args = ap.parse_args()
    out_dir = args.out or os.path.join("build/eval", os.path.basename(os.path.normpath(args.model_dir)))
    os.makedirs(out_dir, exist_ok=True)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    beams = [int(b) for b in args.beams.split(",")]
    if args.langs:
        langs = args.langs.split(",")
    else:
        found = [f[:-4] for f in os.listdir(args.test_dir) if f.endswith(".tsv")]
        langs = sorted(found, key=lambda l: (score.LANG_ORDER.index(l) if l in score.LANG_ORDER else 99, l))

    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.model_dir, "spiece.model"))
    model = SwitchTransformersForConditionalGeneration.from_pretrained(args.model_dir, dtype=torch.float32)
    model.to(device).eval()
    ja = score.resolve_ja_tokenizer(args.ja_tokenize)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"model {args.model_dir} ({sum(p.numel() for p in model.parameters()):,} params) on {dev_name}, "
          f"float32; languages {','.join(langs)}; beams {beams}; ja BLEU tokenize {ja}", flush=True)

    jobs = []  # (direction, sources, references, tag id)
    for lang in langs:
        en, tgt = read_test(os.path.join(args.test_dir, f"{lang}.tsv"))
        if args.max_sentences:
            en, tgt = en[:args.max_sentences], tgt[:args.max_sentences]
        for direction, src, ref, tag in ((f"en-{lang}", en, tgt, f"<2{lang}>"), (f"{lang}-en", tgt, en, "<2en>")):
            tag_id = sp.piece_to_id(tag)
            if sp.id_to_piece(tag_id) != tag:
                raise SystemExit(f"spiece.model has no piece {tag}")
            score.write_lines(os.path.join(out_dir, f"src.{direction}.txt"), src)
            score.write_lines(os.path.join(out_dir, f"ref.{direction}.txt"), ref)
            jobs.append((direction, src, ref, tag_id))

    timing = {}
    for b in beams:
        t0 = time.time()
        n = 0
        for direction, src, ref, tag_id in jobs:
            t1 = time.time()
            hyps = translate(model, sp, src, tag_id, b, args.batch_size, args.max_new_tokens, device)
            score.write_lines(os.path.join(out_dir, f"hyp.{b}.{direction}.txt"), hyps)
            n += len(src)
            print(f"beam {b} {direction}: {len(src)} sentences in {time.time() - t1:.1f}s", flush=True)
        dt = time.time() - t0
        timing[str(b)] = dict(seconds=round(dt, 2), sentences=n, sentences_per_s=round(n / dt, 1))

    scores = score.score_folder(out_dir, out_dir, ja)
    print()
    print(score.markdown_table(scores))
    print(f"\nBLEU: sacrebleu, tokenize 13a / zh (zh_CN) / {ja} (ja); chrF: sacrebleu chrF (6-grams, beta 2)")
    print("transformers time: " + ", ".join(f"beam {b} {v['seconds']}s ({v['sentences_per_s']} sent/s)"
                                            for b, v in timing.items()))
    meta = dict(model_dir=os.path.abspath(args.model_dir), test_dir=os.path.abspath(args.test_dir), device=dev_name,
                dtype="float32", max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                max_sentences=args.max_sentences, ja_tokenize=ja, timing=timing,
                versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                              sentencepiece=spm.__version__, sacrebleu=score.sacrebleu_version()))
    with open(os.path.join(out_dir, "scores.json"), "w", encoding="utf-8") as f:
        json.dump(dict(meta=meta, scores={str(b): dict(per_direction=v, **score.averages(v))
                                          for b, v in scores.items()}), f, indent=1, ensure_ascii=False)
    print(f"wrote {out_dir}/scores.json")


if __name__ == "__main__":
    main()
