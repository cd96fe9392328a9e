#!/usr/bin/env python3
"""BLEU / chrF for a folder of hypotheses, and the exact-match rate between two such folders.

File naming (what tools/train/evaluate.py writes; produce the engine's output the same way):
    hyp.<beam>.<src>-<tgt>.txt   one detokenized translation per line (e.g. hyp.4.en-pt_BR.txt)
    ref.<src>-<tgt>.txt          references, same line order
    src.<src>-<tgt>.txt          sources (plain text, no language tag)

    python3 tools/train/score.py build/eval/engine --refs build/eval/hf            # BLEU/chrF table
    python3 tools/train/score.py build/eval/engine --compare build/eval/hf --min-match 0.99

BLEU tokenization (sacrebleu): '13a' for targets written with spaces, 'zh' for zh_CN, and for ja 'ja-mecab' when
sacrebleu's Japanese extras (mecab-python3 + ipadic, `pip install sacrebleu[ja]`) are installed, else 'char'
(character-level BLEU; needs nothing, so it works offline). The tokenizer used is printed and stored in the JSON,
since the two ja variants give different numbers: only compare scores made with the same one (`--ja-tokenize`
forces a choice). chrF is sacrebleu's default chrF (character 6-grams, beta 2), language-independent.
"""
import argparse
import json
import os
import re
import sys
from collections import defaultdict

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from cli_help import HelpFormatter

LANG_ORDER = ["de", "fr", "es", "it", "pt_BR", "ru", "uk", "sv", "ja", "zh_CN"]
HYP_RE = re.compile(r"^hyp\.(\d+)\.([A-Za-z_]+)-([A-Za-z_]+)\.txt$")


def sacrebleu_version():
    return sacrebleu.__version__


def read_lines(path):
    """One entry per line; a final newline does not make an extra empty entry. Only '\\n' splits (not the other
    Unicode line breaks that str.splitlines() honours), to stay aligned with line-based tools."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n") if text else []


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line.replace("\n", " ") + "\n")


def resolve_ja_tokenizer(requested="auto"):
    if requested != "auto":
        BLEU(tokenize=requested)  # fails loudly if unavailable
        return requested
    try:
        BLEU(tokenize="ja-mecab")
        return "ja-mecab"
    except Exception:  # sacrebleu raises when mecab-python3/ipadic are missing
        return "char"


def bleu_tokenizer(tgt, ja_tokenizer):
    if tgt == "zh_CN" or tgt.startswith("zh"):
        return "zh"
    if tgt == "ja":
        return ja_tokenizer
    return "13a"


def direction_key(direction):
    """Sort en-X before X-en, languages in the usual order."""
    src, tgt = direction.split("-")
    lang = tgt if src == "en" else src
    return (LANG_ORDER.index(lang) if lang in LANG_ORDER else len(LANG_ORDER), lang, src != "en")


def score_lines(hyps, refs, tgt, ja_tokenizer):
    tok = bleu_tokenizer(tgt, ja_tokenizer)
    bleu = BLEU(tokenize=tok).corpus_score(hyps, [refs])
    chrf = CHRF().corpus_score(hyps, [refs])
    return dict(bleu=round(bleu.score, 2), chrf=round(chrf.score, 2), bleu_tokenize=tok, sentences=len(hyps))


def find_hyps(folder):
    """{beam: {direction: path}}"""
    found = defaultdict(dict)
    for name in os.listdir(folder):
        m = HYP_RE.match(name)
        if m:
            found[int(m.group(1))][f"{m.group(2)}-{m.group(3)}"] = os.path.join(folder, name)
    return found


def score_folder(hyp_dir, ref_dir=None, ja_tokenizer="char"):
    """{beam: {direction: {bleu, chrf, bleu_tokenize, sentences}}}; refs from ref_dir (default hyp_dir)."""
    ref_dir = ref_dir or hyp_dir
    scores = {}
    for beam, files in sorted(find_hyps(hyp_dir).items()):
        scores[beam] = {}
        for direction in sorted(files, key=direction_key):
            hyps = read_lines(files[direction])
            ref_path = os.path.join(ref_dir, f"ref.{direction}.txt")
            refs = read_lines(ref_path)
            if len(hyps) != len(refs):
                raise SystemExit(f"{files[direction]}: {len(hyps)} lines, but {ref_path} has {len(refs)}")
            scores[beam][direction] = score_lines(hyps, refs, direction.split("-")[1], ja_tokenizer)
    return scores


def averages(per_dir):
    out = {}
    for name, pick in (("avg", lambda d: True), ("avg en-X", lambda d: d.startswith("en-")),
                       ("avg X-en", lambda d: d.endswith("-en"))):
        vals = [v for d, v in per_dir.items() if pick(d)]
        if vals:
            out[name] = dict(bleu=round(sum(v["bleu"] for v in vals) / len(vals), 2),
                             chrf=round(sum(v["chrf"] for v in vals) / len(vals), 2))
    return out


def markdown_table(scores):
    beams = sorted(scores)
    directions = sorted({d for b in beams for d in scores[b]}, key=direction_key)
    head = "| direction | " + " | ".join(f"BLEU b{b} | chrF b{b}" for b in beams) + " | BLEU tok | n |"
    rows = [head, "|" + "---|" * (2 * len(beams) + 3)]
    for d in directions:
        cells = []
        for b in beams:
            v = scores[b].get(d)
            cells += [f"{v['bleu']:.2f}", f"{v['chrf']:.2f}"] if v else ["", ""]
        any_v = next(scores[b][d] for b in beams if d in scores[b])
        rows.append(f"| {d} | " + " | ".join(cells) + f" | {any_v['bleu_tokenize']} | {any_v['sentences']} |")
    avgs = {b: averages(scores[b]) for b in beams}
    for name in ("avg en-X", "avg X-en", "avg"):
        if any(name in avgs[b] for b in beams):
            cells = []
            for b in beams:
                v = avgs[b].get(name)
                cells += [f"{v['bleu']:.2f}", f"{v['chrf']:.2f}"] if v else ["", ""]
            rows.append(f"| **{name}** | " + " | ".join(cells) + " | | |")
    return "\n".join(rows)


def compare_folders(dir_a, dir_b, show=3):
    """Exact-match rate of hypothesis lines between two folders, over the (beam, direction) files both have."""
    a, b = find_hyps(dir_a), find_hyps(dir_b)
    result, total, same = {}, 0, 0
    examples = []
    for beam in sorted(set(a) & set(b)):
        result[beam] = {}
        for direction in sorted(set(a[beam]) & set(b[beam]), key=direction_key):
            la, lb = read_lines(a[beam][direction]), read_lines(b[beam][direction])
            if len(la) != len(lb):
                raise SystemExit(f"{a[beam][direction]} has {len(la)} lines, {b[beam][direction]} has {len(lb)}")
            eq = sum(x == y for x, y in zip(la, lb))
            result[beam][direction] = dict(match=eq, sentences=len(la), rate=eq / max(1, len(la)))
            total += len(la)
            same += eq
            for i, (x, y) in enumerate(zip(la, lb)):
                if x != y and len(examples) < show:
                    examples.append((beam, direction, i + 1, x, y))
    only = sorted({f"hyp.{bm}.{d}" for bm in a for d in a[bm]} ^ {f"hyp.{bm}.{d}" for bm in b for d in b[bm]})
    return dict(per_file=result, match=same, sentences=total, rate=same / max(1, total), only_in_one=only,
                examples=examples)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("hyp_dir")
    ap.add_argument("--refs", default=None, help="folder with ref.<src>-<tgt>.txt (default: hyp_dir)")
    ap.add_argument("--json", default=None, help="write the scores (and comparison) here")
    ap.add_argument("--ja-tokenize", default="auto", choices=["auto", "char", "ja-mecab"],
                    help="BLEU tokenizer for ja targets (auto: ja-mecab if installed, else char)")
    ap.add_argument("--compare", default=None, metavar="DIR", help="exact-match rate against DIR's hypotheses")
    ap.add_argument("--min-match", type=float, default=None, help="with --compare: exit 1 below this rate")
    ap.add_argument("--no-bleu", action="store_true", help="only the comparison")
    args = ap.parse_args()

    out = {}
    if not args.no_bleu:
        ja = resolve_ja_tokenizer(args.ja_tokenize)
        scores = score_folder(args.hyp_dir, args.refs, ja)
        if not scores:
            raise SystemExit(f"{args.hyp_dir}: no hyp.<beam>.<src>-<tgt>.txt files")
        print(markdown_table(scores))
        print(f"\nBLEU: sacrebleu, tokenize 13a / zh (zh_CN) / {ja} (ja); chrF: sacrebleu chrF (6-grams, beta 2)")
        out["scores"] = {str(b): dict(per_direction=v, **averages(v)) for b, v in scores.items()}
        out["ja_tokenize"] = ja
    failed = False
    if args.compare:
        cmp = compare_folders(args.hyp_dir, args.compare)
        print(f"\nExact match, {args.hyp_dir} vs {args.compare}:\n")
        print("| beam | direction | identical | sentences | rate |\n|---|---|---|---|---|")
        for beam, per_dir in cmp["per_file"].items():
            for d, v in per_dir.items():
                print(f"| {beam} | {d} | {v['match']} | {v['sentences']} | {100 * v['rate']:.2f}% |")
        print(f"| **all** | | {cmp['match']} | {cmp['sentences']} | **{100 * cmp['rate']:.2f}%** |")
        if cmp["only_in_one"]:
            print(f"\nfiles in only one folder (not compared): {', '.join(cmp['only_in_one'])}")
        for beam, d, line, x, y in cmp["examples"]:
            print(f"\ndiffers: beam {beam} {d} line {line}\n  A: {x}\n  B: {y}")
        out["compare"] = {k: v for k, v in cmp.items() if k != "examples"}
        out["compare"]["other"] = args.compare
        if args.min_match is not None and cmp["rate"] < args.min_match:
            print(f"\nFAIL: exact-match rate {cmp['rate']:.4f} < {args.min_match}")
            failed = True
        if cmp["sentences"] == 0:
            print("\nFAIL: no common hypothesis files")
            failed = True
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
