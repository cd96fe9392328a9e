#!/usr/bin/env python3
"""The paper's Table 2 for expert quantization: translation quality of fp32 vs int8 vs int4 expert weights.

Runs the engine on the CPU (`--device cpu --dtype fp32`) over every direction of the test split (en-X and X-en
for each data/test/X.tsv) once per variant and beam size, and scores the output with tools/train/score.py (the
same BLEU/chrF as tools/train/evaluate.py). Variants:

    fp32         expert weights as loaded (no --quantize)
    int8, int4   --quantize int8|int4: symmetric, one fp16 scale per output channel
    int8-g128, int4-g128   with --groups: --group-size 128 (one scale per 128 input features)
    int8-ne8, int4-ne8     with --non-experts: --quantize-non-experts too (attention and dense FFN weights int8,
                           with the experts' scales: int8-g128-ne8, int4-g128-ne8 with --groups too)

Each engine call is `elephant translate --model M --device cpu --dtype fp32 --target-lang <tgt>
--beam-size B --max-length 64 --input src.<dir>.txt --output <variant>/hyp.<B>.<dir>.txt`, as tools/train/README.md
feeds the engine. Writes to --out: src/ref files, one folder of hypotheses per variant, scores.json, and prints a
Markdown table: per direction "BLEU / chrF" of each variant and beam, the averages, the average change vs fp32 and
the share of output lines identical to fp32's (greedy and beam separately), then the same averages as one row per
variant (the shape of the paper's Table 2).

    python3 tools/bench/quantization_quality.py --limit 20                      # quick check
    nice -n 10 python3 tools/bench/quantization_quality.py --groups --threads 1   # full test split
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
import score  # noqa: E402
from cli_help import HelpFormatter  # noqa: E402

TARGETS = {"int8": -0.1, "int4": -0.3}  # average BLEU change vs fp32 that each bit width must stay above


def variants(with_groups, with_non_experts):
    """[(name, extra engine flags)]"""
    out = [("fp32", []), ("int8", ["--quantize", "int8"]), ("int4", ["--quantize", "int4"])]
    if with_groups:
        out += [(f"{q}-g128", ["--quantize", q, "--group-size", "128"]) for q in ("int8", "int4")]
    if with_non_experts:
        out += [(f"{name}-ne8", flags + ["--quantize-non-experts"]) for name, flags in out[1:]]
    return out


def read_test(path, limit):
    pairs = [line.split("\t") for line in score.read_lines(path)]
    bad = [n for n, p in enumerate(pairs, 1) if len(p) != 2]
    if bad:
        raise SystemExit(f"{path}:{bad[0]}: expected english<TAB>target")
    pairs = pairs[:limit] if limit else pairs
    return [p[0] for p in pairs], [p[1] for p in pairs]


def write_test_files(test_dir, out_dir, langs, limit):
    """Writes src/ref files; returns [(direction, target language, sentences)]."""
    jobs = []
    for lang in langs:
        en, tgt = read_test(os.path.join(test_dir, f"{lang}.tsv"), limit)
        for direction, src, ref, tgt_lang in ((f"en-{lang}", en, tgt, lang), (f"{lang}-en", tgt, en, "en")):
            score.write_lines(os.path.join(out_dir, f"src.{direction}.txt"), src)
            score.write_lines(os.path.join(out_dir, f"ref.{direction}.txt"), ref)
            jobs.append((direction, tgt_lang, len(src)))
    return jobs


def run_engine(args, flags, beam, direction, tgt_lang, hyp_path):
    cmd = [args.engine, "translate", "--model", args.model, "--device", "cpu", "--dtype", "fp32",
           "--target-lang", tgt_lang, "--beam-size", str(beam), "--max-length", str(args.max_length),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--input", os.path.join(args.out, f"src.{direction}.txt"), "--output", hyp_path] + flags
    result = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"engine failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr}")


def cell(v):
    return f"{v['bleu']:.2f} / {v['chrf']:.2f}" if v else ""


def markdown(results, names, beams):
    """One table: rows = directions + averages + change vs fp32 + identical lines; columns = variant x beam."""
    cols = [(n, b) for b in beams for n in names]
    label = {1: "greedy"}
    lines = ["| direction | " + " | ".join(f"{n} {label.get(b, f'beam {b}')}" for n, b in cols) + " |",
             "|---|" + "---|" * len(cols)]
    directions = sorted({d for n, b in cols for d in results[n]["scores"][b]}, key=score.direction_key)
    for d in directions:
        lines.append(f"| {d} | " + " | ".join(cell(results[n]["scores"][b].get(d)) for n, b in cols) + " |")
    for avg in ("avg en-X", "avg X-en", "avg"):
        lines.append(f"| **{avg}** | " + " | ".join(cell(results[n]["averages"][b].get(avg)) for n, b in cols) + " |")
    delta = [results[n]["delta"].get(b) for n, b in cols]
    lines.append("| **avg change vs fp32** | " + " | ".join(
        f"{v['bleu']:+.2f} / {v['chrf']:+.2f}" if v else "" for v in delta) + " |")
    same = [results[n]["identical"].get(b) for n, b in cols]
    lines.append("| **identical to fp32** | " + " | ".join(f"{100 * v:.1f}%" if v is not None else "" for v in same)
                 + " |")
    return "\n".join(lines)


def summary(results, names, beams):
    """Table 2's shape: one row per variant; average BLEU / chrF, change vs fp32 and identical lines per beam."""
    head = " | ".join(f"{'greedy' if b == 1 else f'beam {b}'}: {c}" for b in beams
                      for c in ("avg BLEU", "avg chrF", "BLEU change", "identical"))
    lines = [f"| experts | {head} |", "|---|" + "---|" * (4 * len(beams))]
    for n in names:
        r, cells = results[n], []
        for b in beams:
            avg, d, same = r["averages"][b]["avg"], r["delta"].get(b), r["identical"].get(b)
            cells += [f"{avg['bleu']:.2f}", f"{avg['chrf']:.2f}", f"{d['bleu']:+.2f}" if d else "",
                      f"{100 * same:.1f}%" if same is not None else ""]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--engine", default="build/bin/elephant", help="the elephant binary")
    ap.add_argument("--model", default="models/demo", help="model folder")
    ap.add_argument("--test-dir", default="data/test", help="folder of <lang>.tsv: english<TAB>target")
    ap.add_argument("--out", default="build/eval/quantization", help="output folder")
    ap.add_argument("--langs", default=None, help="comma-separated (default: every <lang>.tsv in --test-dir)")
    ap.add_argument("--beams", default="1,4", help="beam sizes to run (1 = greedy)")
    ap.add_argument("--groups", action="store_true", help="also run int8/int4 with --group-size 128")
    ap.add_argument("--non-experts", action="store_true",
                    help="also run int8/int4 experts with the non-expert weights in int8 (--quantize-non-experts)")
    ap.add_argument("--limit", type=int, default=None, help="first N test pairs per language (quick runs)")
    ap.add_argument("--threads", type=int, default=0,
                    help="engine --threads (0: all cores; on a busy machine 1 can be several times faster)")
    ap.add_argument("--batch-size", type=int, default=32, help="engine --batch-size")
    ap.add_argument("--max-length", type=int, default=64, help="engine --max-length (generated tokens, EOS included)")
    ap.add_argument("--skip-existing", action="store_true",
                    help="keep hypothesis files that already have the right number of lines (resume a run)")
    ap.add_argument("--ja-tokenize", default="auto", choices=["auto", "char", "ja-mecab"],
                    help="BLEU tokenizer for ja targets (auto: ja-mecab if installed, else char)")
    args = ap.parse_args()
    if not os.access(args.engine, os.X_OK):
        raise SystemExit(f"{args.engine}: not an executable (build it with scripts/build.sh)")
    beams = [int(b) for b in args.beams.split(",")]
    langs = args.langs.split(",") if args.langs else sorted(
        (f[:-4] for f in os.listdir(args.test_dir) if f.endswith(".tsv")),
        key=lambda l: (score.LANG_ORDER.index(l) if l in score.LANG_ORDER else 99, l))
    os.makedirs(args.out, exist_ok=True)
    jobs = write_test_files(args.test_dir, args.out, langs, args.limit)
    ja = score.resolve_ja_tokenizer(args.ja_tokenize)
    selected = variants(args.groups, args.non_experts)
    print(f"{len(jobs)} directions x {sum(n for _, _, n in jobs) // len(jobs)} sentences, variants "
          f"{', '.join(n for n, _ in selected)}, beams {beams}; {machine()}", flush=True)

    timing = {}
    for name, flags in selected:
        folder = os.path.join(args.out, name)
        os.makedirs(folder, exist_ok=True)
        for beam in beams:
            t0, done = time.time(), 0
            for direction, tgt_lang, n in jobs:
                hyp = os.path.join(folder, f"hyp.{beam}.{direction}.txt")
                if args.skip_existing and os.path.exists(hyp) and len(score.read_lines(hyp)) == n:
                    continue
                run_engine(args, flags, beam, direction, tgt_lang, hyp)
                done += n
            timing[f"{name} beam {beam}"] = dict(seconds=round(time.time() - t0, 1), sentences=done)
            print(f"{name} beam {beam}: {done} sentences translated in {time.time() - t0:.1f} s", flush=True)

    results = {}
    for name, _ in selected:
        folder = os.path.join(args.out, name)
        scores = {b: {d: score.score_lines(score.read_lines(os.path.join(folder, f"hyp.{b}.{d}.txt")),
                                           score.read_lines(os.path.join(args.out, f"ref.{d}.txt")),
                                           d.split("-")[1], ja) for d, _, _ in jobs} for b in beams}
        results[name] = dict(scores=scores, averages={b: score.averages(s) for b, s in scores.items()},
                             delta={}, identical={})
    directions = {d for d, _, _ in jobs}
    for name in [n for n, _ in selected][1:]:
        r, base = results[name], results["fp32"]
        r["delta"] = {b: {k: round(r["averages"][b]["avg"][k] - base["averages"][b]["avg"][k], 2)
                          for k in ("bleu", "chrf")} for b in beams}
        cmp = score.compare_folders(os.path.join(args.out, name), os.path.join(args.out, "fp32"), show=0)
        for b in beams:
            files = [v for d, v in cmp["per_file"][b].items() if d in directions]
            r["identical"][b] = sum(v["match"] for v in files) / max(1, sum(v["sentences"] for v in files))

    names = [n for n, _ in selected]
    print()
    print(markdown(results, names, beams))
    print()
    print(summary(results, names, beams))
    print(f"\nCells: BLEU / chrF (sacrebleu; BLEU tokenize 13a, zh for zh_CN, {ja} for ja). "
          "Identical: output lines equal to fp32's at the same beam.")
    checks = []
    for name in names[1:]:
        target = TARGETS[name.split("-")[0]]
        for b in beams:
            d = results[name]["delta"][b]["bleu"]
            checks.append(dict(variant=name, beam=b, bleu_change=d, target=target, ok=d >= target))
            verdict = "ok" if d >= target else "MISSED"
            print(f"{name} beam {b}: avg BLEU change {d:+.2f} (target >= {target}): {verdict}")

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = dict(date=datetime.date.today().isoformat(), machine=machine(), commit=commit, engine=args.engine,
                model=args.model, test_dir=args.test_dir, langs=langs, beams=beams, limit=args.limit,
                threads=args.threads, batch_size=args.batch_size, max_length=args.max_length, ja_tokenize=ja,
                sacrebleu=score.sacrebleu_version(), seconds=timing)
    out = dict(meta=meta, checks=checks, variants={
        name: dict(flags=flags, identical_to_fp32={str(b): v for b, v in results[name]["identical"].items()},
                   avg_change_vs_fp32={str(b): v for b, v in results[name]["delta"].items()},
                   scores={str(b): dict(per_direction=s, **results[name]["averages"][b])
                           for b, s in results[name]["scores"].items()})
        for name, flags in selected})
    with open(os.path.join(args.out, "scores.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print(f"wrote {os.path.join(args.out, 'scores.json')}")


if __name__ == "__main__":
    main()
