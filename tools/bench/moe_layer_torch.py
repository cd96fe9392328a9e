#!/usr/bin/env python3
"""The baseline of bench/cuda_moe_bench.cu: one MoE FFN layer of the paper's shape with torch._grouped_mm.

Same problem as the engine's benchmark: d_model 1024, d_ff 4096, 32 experts, ReLU, bf16, top-1 routing fixed by
splitmix64(1234 + t) % 32, 16 layer copies rotated so that L2 never holds the experts of the timed call. Two
variants, each captured in a CUDA graph (as the engine's decode steps are) and also run eagerly:
  layer:      argsort by expert, gather, _grouped_mm(wi) + ReLU, _grouped_mm(wo), scale, index_add (the whole layer)
  grouped_mm: only the two grouped GEMMs + ReLU on pre-sorted rows
CUDA events around 16 layers, median of --repeats, per layer. Prints a Markdown table; --json writes it.

    python3 tools/bench/moe_layer_torch.py --json build/bench/moe_torch.json
"""
import argparse
import json
import statistics

import torch

D_MODEL, D_FF, EXPERTS, COPIES = 1024, 4096, 32, 16
HBM_BYTES_PER_S = 2.96e12


def splitmix64(x):
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def routing(tokens):
    return [splitmix64(1234 + t) % EXPERTS for t in range(tokens)]


def time_per_layer(fn, graph, repeats):
    """Median milliseconds of one call of fn (which runs COPIES layers), divided by COPIES."""
    if graph:
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
    else:
        run = fn
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / COPIES)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1,2,8,40,96,320,1280,3840")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    # Linear layout [E, out, in]; _grouped_mm takes [E, K, N], i.e. the transposed view.
    wi = [torch.randn(EXPERTS, D_FF, D_MODEL, device=dev, dtype=dtype) * 0.02 for _ in range(COPIES)]
    wo = [torch.randn(EXPERTS, D_MODEL, D_FF, device=dev, dtype=dtype) * 0.02 for _ in range(COPIES)]
    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        expert = torch.tensor(routing(tokens), device=dev, dtype=torch.int32)
        x = torch.randn(tokens, D_MODEL, device=dev, dtype=dtype)
        hidden = torch.randn(tokens, D_MODEL, device=dev, dtype=dtype)
        p = torch.rand(tokens, device=dev, dtype=torch.float32) * 0.8 + 0.2
        order = torch.argsort(expert, stable=True)
        offs = torch.bincount(expert, minlength=EXPERTS).cumsum(0).to(torch.int32)
        xs = x[order].contiguous()

        bounds = torch.arange(1, EXPERTS + 1, device=dev, dtype=torch.int32)

        def layer():
            for c in range(COPIES):
                # Everything on the device (bincount would sync with the host, which a graph cannot hold).
                sorted_expert, o = torch.sort(expert, stable=True)
                of = torch.searchsorted(sorted_expert, bounds).to(torch.int32)
                h = torch.relu(torch._grouped_mm(x[o], wi[c].transpose(1, 2), offs=of))
                y = torch._grouped_mm(h, wo[c].transpose(1, 2), offs=of)
                hidden.index_add_(0, o, (y.float() * p[o, None]).to(dtype))

        def grouped_only():
            for c in range(COPIES):
                h = torch.relu(torch._grouped_mm(xs, wi[c].transpose(1, 2), offs=offs))
                torch._grouped_mm(h, wo[c].transpose(1, 2), offs=offs)

        hit = len(set(routing(tokens)))
        floor_ms = (hit * 2 * D_FF * D_MODEL * 2 + 3 * tokens * D_MODEL * 2) / HBM_BYTES_PER_S * 1e3
        row = {"tokens": tokens, "experts_hit": hit, "floor_ms": floor_ms}
        for name, fn in (("layer", layer), ("grouped_mm", grouped_only)):
            for graph in (True, False):
                row[f"{name}_{'graph' if graph else 'eager'}_ms"] = time_per_layer(fn, graph, args.repeats)
        rows.append(row)
        print(row, flush=True)

    print(f"\ntorch {torch.__version__}, {torch.cuda.get_device_name()}, bf16, ms per layer (median of {args.repeats})")
    print("| tokens | experts hit | HBM floor | layer (graph) | layer (eager) | grouped_mm (graph) | grouped_mm (eager) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']} | {r['experts_hit']} | {r['floor_ms']:.4f} | {r['layer_graph_ms']:.4f} | "
              f"{r['layer_eager_ms']:.4f} | {r['grouped_mm_graph_ms']:.4f} | {r['grouped_mm_eager_ms']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
