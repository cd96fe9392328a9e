#!/usr/bin/env python3
"""The paper-shaped Switch model (Kim et al. 2022: 5.32B parameters) with random weights, for benchmarks.

Saved once with transformers' save_pretrained, sharded, in fp16, so that transformers and the engine load the
same checkpoint. Weights are drawn on the GPU when there is one (seconds for 5.3B parameters), with
transformers' own initialization (its router weights have std 1, so routing is spread over many experts).

    python3 tools/bench/make_paper_model.py --out build/paper_model            # ~10.6 GB
    python3 tools/bench/make_paper_model.py --out /tmp/tiny --tiny             # a few MB, for testing the tools
"""
import argparse
import time

import torch
from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

PAPER = dict(d_model=1024, d_ff=4096, d_kv=64, num_heads=16, num_layers=24, num_sparse_encoder_layers=12,
             num_decoder_layers=12, num_sparse_decoder_layers=6, num_experts=32, vocab_size=128000)
TINY = dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=4, num_sparse_encoder_layers=2,
            num_decoder_layers=2, num_sparse_decoder_layers=1, num_experts=8, vocab_size=1000)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="a small model of the same structure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shard-size", default="2GB")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = SwitchTransformersConfig(**(TINY if args.tiny else PAPER), expert_capacity=100000,
                                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    start = time.time()
    with torch.device(device):
        model = SwitchTransformersForConditionalGeneration(config).to(torch.float16).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"{params:,} parameters ({params / 1e9:.2f}B), initialized on {device} in {time.time() - start:.1f}s")
    start = time.time()
    model.save_pretrained(args.out, max_shard_size=args.max_shard_size)
    print(f"saved to {args.out} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
