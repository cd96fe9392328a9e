#!/usr/bin/env python3
"""The paper's Table 3 baseline: transformers fp16 generate() throughput in input tokens per second.

Inputs are random 40-token sources (EOS last); decoding is forced to exactly 40 new tokens
(min_new_tokens = max_new_tokens), greedy (beam 1) or beam search (beam 2). For each (batch, beam) it runs
warm-up batches, then times `--batches` batches with CUDA events and reports the median:
input tok/s = batch x input length / median batch time. Prints a Markdown table and writes JSON.

    python3 tools/bench/hf_generate_bench.py build/paper_model --json build/bench/hf_table3.json
    python3 tools/bench/hf_generate_bench.py /tmp/tiny --device cpu --batch-sizes 1,8 --batches 2   # tool test
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import SwitchTransformersForConditionalGeneration


def timed(device, fn):
    """Seconds for fn(): CUDA events on a GPU, wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def host_cpu():
    """The host's CPU model: transformers' generate() is bound by the host at these sizes, so its numbers move with
    the machine's CPU (Table 3's ratios with them)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--batch-sizes", default="1,8,32,96")
    ap.add_argument("--beams", default="1,2")
    ap.add_argument("--input-length", type=int, default=40, help="source tokens, EOS included")
    ap.add_argument("--new-tokens", type=int, default=40, help="generated tokens, forced")
    ap.add_argument("--batches", type=int, default=5, help="timed batches per configuration (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    model = SwitchTransformersForConditionalGeneration.from_pretrained(
        args.model_dir, dtype=getattr(torch, args.dtype)).to(device).eval()
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    print(f"host CPU: {host_cpu()}", flush=True)
    for beams in (int(b) for b in args.beams.split(",")):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            # Ids 3.. avoid pad (0) and eos (1) inside the source; the last token is EOS.
            ids = torch.randint(3, vocab, (batch, args.input_length), generator=generator)
            ids[:, -1] = 1
            ids = ids.to(device)
            kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=beams, do_sample=False,
                          min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens)
            with torch.inference_mode():
                for _ in range(args.warmup):
                    model.generate(**kwargs)
                seconds = [timed(device, lambda: model.generate(**kwargs)) for _ in range(args.batches)]
            median = statistics.median(seconds)
            rows.append(dict(batch=batch, beams=beams, seconds=median,
                             input_tokens_per_s=batch * args.input_length / median))
            print(f"batch {batch:3d} beam {beams}: {median * 1000:9.1f} ms/batch, "
                  f"{rows[-1]['input_tokens_per_s']:9.1f} input tok/s", flush=True)

    print("\n| batch | beam | ms per batch | input tok/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['beams']} | {r['seconds'] * 1000:.1f} | {r['input_tokens_per_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                           host_cpu=host_cpu(), dtype=args.dtype, input_length=args.input_length, new_tokens=args.new_tokens,
                           versions=dict(torch=torch.__version__, transformers=transformers.__version__),
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
