#!/usr/bin/env python3
"""Checks that train.py's training shortcuts compute what transformers computes (CPU, fp32, a few seconds):
  1. --moe-impl dense: same logits and same gradients as transformers' per-expert loop;
  2. RouterLosses: the z-loss equals transformers' router_z_loss_func on a batch without padding, and the
     load-balancing loss equals load_balancing_loss_func when the batch is one sequence per layer group.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402
from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration  # noqa: E402
from transformers.models.switch_transformers import modeling_switch_transformers as st  # noqa: E402


def main():
    torch.manual_seed(0)
    cfg = SwitchTransformersConfig(vocab_size=120, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=4,
                                   num_sparse_encoder_layers=2, num_decoder_layers=2, num_sparse_decoder_layers=1,
                                   num_experts=4, expert_capacity=100000, router_jitter_noise=0.0,
                                   dropout_rate=0.0, decoder_start_token_id=0)
    ref = SwitchTransformersForConditionalGeneration(cfg)
    for m in ref.modules():  # small router weights, so that every expert gets tokens
        if isinstance(m, st.SwitchTransformersTop1Router):
            m.classifier.weight.data.normal_(0, 0.2)
    dense = SwitchTransformersForConditionalGeneration(cfg)
    dense.load_state_dict(ref.state_dict())
    for m in dense.modules():
        if isinstance(m, st.SwitchTransformersExperts):
            m.forward = train.dense_experts_forward.__get__(m)
    train.fp32_routers(dense, "cpu")
    losses = train.RouterLosses(dense)

    src = torch.randint(3, 120, (3, 11))
    lab = torch.randint(3, 120, (3, 7))
    out = []
    for model in (ref, dense):
        model.train()
        losses.start()
        logits = model(input_ids=src, labels=lab).logits
        logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out.append((logits.detach(), grads))
    (l0, g0), (l1, g1) = out
    assert g0.keys() == g1.keys()
    dl = (l0 - l1).abs().max().item()
    dg = max((g0[k] - g1[k]).abs().max().item() / (g0[k].abs().max().item() + 1e-12) for k in g0)
    print(f"dense MoE vs transformers: max |logit diff| {dl:.2e}, max relative grad diff {dg:.2e}")
    assert dl < 1e-5 and dg < 1e-4

    # Router losses: rerun the dense model (captures logits), compare with transformers' functions.
    losses.start()
    dense(input_ids=src, labels=lab)
    enc_logits = [x.detach() for x in losses.logits["encoder"]]  # per layer, [B*S, E]
    z, aux = losses.compute({"encoder": torch.ones(src.numel(), dtype=torch.bool),
                             "decoder": torch.ones(lab.numel(), dtype=torch.bool)})
    B, S = src.shape
    cat = torch.cat([x.view(B, S, -1) for x in enc_logits], dim=1)  # transformers' layout [B, S*layers, E]
    ref_z_enc = st.router_z_loss_func(cat)
    losses.logits = {"encoder": [x for x in enc_logits], "decoder": []}
    z_enc, _ = losses.compute({"encoder": torch.ones(src.numel(), dtype=torch.bool)})
    print(f"encoder z-loss: ours {z_enc.item():.6f}, transformers {ref_z_enc.item():.6f}")
    assert abs(z_enc.item() - ref_z_enc.item()) < 1e-5
    one = enc_logits[0][:S]  # one sequence, one layer: the grouping conventions coincide
    losses.logits = {"encoder": [one], "decoder": []}
    _, aux_one = losses.compute({"encoder": torch.ones(S, dtype=torch.bool)})
    probs = one.softmax(-1)[None]
    ref_aux = st.load_balancing_loss_func(probs, probs.argmax(-1))
    print(f"load-balancing loss (1 sequence): ours {aux_one.item():.6f}, transformers {ref_aux.item():.6f}")
    assert abs(aux_one.item() - ref_aux.item()) < 1e-5
    print("OK")


if __name__ == "__main__":
    main()
