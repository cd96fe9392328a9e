#!/usr/bin/env python3
"""Where the GPU idles in a CUPTI timeline (bench/cupti_trace.cc) and what the host did meanwhile.

    python3 tools/bench/trace_gaps.py trace.csv [--top 12] [--gap-us 5]

Each window between a cudaProfilerStart and the next cudaProfilerStop (bench_translate --steps-only
--profile-search brackets one whole search per batch and beam size) gets: its wall time, the time the GPU ran work
(the union of kernels, copies and sets), the idle rest and how it splits into gaps, the GPU time of each kernel
(kernels replayed from a graph apart from those launched one by one), the host time of each runtime call, and the
longest gaps with the runtime calls that overlap them.
"""
import argparse
import csv
import shutil
import subprocess
from collections import defaultdict


def demangle(names):
    names = sorted(set(names))
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return {n: short(d) for n, d in zip(names, out)}


def short(name):
    """A kernel's function name without namespaces, template arguments or parameters."""
    depth, cut = 0, []
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            cut.append(ch)
    base = "".join(cut).split()[-1] if "".join(cut).split() else name
    return base.split("::")[-1]


def windows(runtime):
    starts = [r for r in runtime if r["name"].startswith("cudaProfilerStart")]
    stops = [r for r in runtime if r["name"].startswith("cudaProfilerStop")]
    for start in starts:
        stop = next((s for s in stops if s["start"] > start["end"]), None)
        if stop:
            yield start["end"], stop["start"]


def union(intervals):
    merged = []
    for begin, end in sorted(intervals):
        if merged and begin <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    return merged


def report(rows, begin, end, names, top, gap_us):
    inside = [r for r in rows if r["start"] >= begin and r["end"] <= end]
    gpu = [r for r in inside if r["kind"] in ("kernel", "memcpy", "memset")]
    host = [r for r in inside if r["kind"] in ("runtime", "sync")]
    busy = union([(r["start"], r["end"]) for r in gpu])
    wall = (end - begin) / 1e3
    busy_us = sum(e - b for b, e in busy) / 1e3
    gaps = [(busy[i + 1][0] - busy[i][1], busy[i][1], busy[i + 1][0]) for i in range(len(busy) - 1)]
    lead = (busy[0][0] - begin) / 1e3 if busy else wall
    tail = (end - busy[-1][1]) / 1e3 if busy else 0.0
    print(f"window {wall / 1e3:.3f} ms: GPU busy {busy_us / 1e3:.3f} ms ({100 * busy_us / wall:.1f}%), "
          f"idle {(wall - busy_us) / 1e3:.3f} ms: {lead / 1e3:.3f} before the first work, {tail / 1e3:.3f} after the "
          f"last, the rest in {len(gaps)} gaps")
    edges = [1, 2, 5, 10, 20, 50, 100, 1000, float("inf")]
    counts = defaultdict(lambda: [0, 0.0])
    for gap, _, _ in gaps:
        us = gap / 1e3
        edge = next(e for e in edges if us < e)
        counts[edge][0] += 1
        counts[edge][1] += us
    print("| gap under us | gaps | idle ms |\n|---|---|---|")
    for edge in edges:
        if edge in counts:
            print(f"| {edge:g} | {counts[edge][0]} | {counts[edge][1] / 1e3:.3f} |")

    kernels = defaultdict(lambda: [0, 0.0])
    for r in gpu:
        where = "graph" if r["graph"] else "launched"
        name = names.get(r["name"], r["name"]) if r["kind"] == "kernel" else r["name"].split(" kind")[0].split()[0]
        kernels[(where, name)][0] += 1
        kernels[(where, name)][1] += (r["end"] - r["start"]) / 1e3
    print("\n| kernel or copy | from | count | GPU ms |\n|---|---|---|---|")
    for (where, name), (count, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top * 2]:
        print(f"| {name} | {where} | {count} | {us / 1e3:.3f} |")

    calls = defaultdict(lambda: [0, 0.0])
    for r in host:
        calls[r["name"]][0] += 1
        calls[r["name"]][1] += (r["end"] - r["start"]) / 1e3
    print("\n| runtime call | count | host ms |\n|---|---|---|")
    for name, (count, us) in sorted(calls.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"| {name} | {count} | {us / 1e3:.3f} |")

    print(f"\nlongest gaps (of those over {gap_us:g} us), with the runtime calls inside them:")
    for gap, gap_begin, gap_end in sorted(gaps, reverse=True)[:top]:
        if gap / 1e3 < gap_us:
            break
        during = defaultdict(float)
        for r in host:
            overlap = min(r["end"], gap_end) - max(r["start"], gap_begin)
            if overlap > 0:
                during[r["name"]] += overlap / 1e3
        before = max((r for r in gpu if r["end"] <= gap_begin), key=lambda r: r["end"], default=None)
        after = min((r for r in gpu if r["start"] >= gap_end), key=lambda r: r["start"], default=None)
        label = lambda r: names.get(r["name"], r["name"]) if r else "-"
        inside = ", ".join(f"{n} {us:.1f}" for n, us in sorted(during.items(), key=lambda kv: -kv[1])[:4])
        print(f"  {gap / 1e3:8.1f} us at {(gap_begin - begin) / 1e6:8.3f} ms, {label(before)} -> {label(after)}: "
              f"{inside or 'no runtime call'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--gap-us", type=float, default=5.0)
    args = parser.parse_args()
    rows = []
    with open(args.trace, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({"kind": r["kind"], "name": r["name"], "start": int(r["start_ns"]), "end": int(r["end_ns"]),
                         "graph": int(r["graph"])})
    names = demangle(r["name"] for r in rows if r["kind"] == "kernel")
    found = list(windows([r for r in rows if r["kind"] == "runtime"]))
    if not found:
        raise SystemExit(f"{args.trace}: no cudaProfilerStart / cudaProfilerStop window")
    for i, (begin, end) in enumerate(found):
        print(f"\n## window {i + 1} of {len(found)}\n")
        report(rows, begin, end, names, args.top, args.gap_us)


if __name__ == "__main__":
    main()
