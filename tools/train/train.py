#!/usr/bin/env python3
"""Train a small multilingual Switch-Transformers translation model from scratch, in transformers' own format.

One model, 20 directions: English <-> each corpus language. A pair (english, target) in language X gives two
examples, `<2X> english -> target` and `<2en> target -> english`. Source ids are `[tag id] + sp.encode(text) +
[eos]`, exactly what `elephant translate --target-lang X` feeds the model (note: `sp.encode("<2X> " + text)` is
NOT the same, SentencePiece puts a lone "▁" piece in front of the tag). Labels are `sp.encode(target) + [eos]`.

Training is time-bounded (`--time-budget-s`, counted from process start) so that it fits one GPU call; `--resume`
chains calls. See tools/train/README.md.
"""
import argparse
import copy
import gzip
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import time

T_START = time.time()  # the time budget counts from here (imports included)

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F
from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration
from transformers.models.switch_transformers import modeling_switch_transformers as st
from cli_help import HelpFormatter

PAD, EOS = 0, 1


def log(msg):
    print(f"[{time.time() - T_START:7.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------

def model_config(args, vocab_size):
    """The shipped architecture (or --tiny), plus any --set key=value overrides."""
    cfg = dict(
        vocab_size=vocab_size, d_model=256, d_kv=64, num_heads=4, d_ff=512,
        num_layers=6, num_sparse_encoder_layers=3, num_decoder_layers=2, num_sparse_decoder_layers=1,
        num_experts=8, dense_act_fn="relu", tie_word_embeddings=True, dropout_rate=0.1,
        # expert_capacity: no effect in transformers 5.17 (the router's cumsum runs over a size-1 axis) and the
        # engine ignores it; large so that it would not drop tokens under another implementation either.
        expert_capacity=100000,
        # Jitter is training-only. transformers applies it in place to the tensor the experts also read, so it
        # perturbs the expert inputs, not just the routing; ST-MoE (Zoph et al. 2022) found input jitter no help.
        router_jitter_noise=args.router_jitter,
        decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS,
        # 10x transformers' default: with 0.001 the routers of the first runs drifted towards fewer experts.
        router_aux_loss_coef=0.01,
    )
    if args.tiny:
        cfg.update(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=4, num_sparse_encoder_layers=2,
                   num_decoder_layers=2, num_sparse_decoder_layers=1, num_experts=4)
    for kv in args.set:
        key, value = kv.split("=", 1)
        try:
            cfg[key] = json.loads(value)  # numbers, true/false, null
        except json.JSONDecodeError:
            cfg[key] = value  # bare strings, e.g. dense_act_fn=gelu
    return SwitchTransformersConfig(**cfg)


def dense_experts_forward(self, hidden_states, selected_experts, routing_weights):
    """Drop-in for SwitchTransformersExperts.forward, used for training only (--moe-impl dense).

    transformers loops over the experts with a `nonzero()`/`torch.where` per expert: ~9 host-device syncs per
    sparse layer, which would dominate a model this small on a GPU. Here every expert runs on every token as two
    batched matmuls and the top-1 gate masks the results: no syncs, a handful of kernels, same function and same
    gradients (unselected experts get an exact zero gate). The extra FLOPs are cheap at d_ff=512.
    The parameters are untouched, so the saved checkpoint is the ordinary transformers one.
    """
    experts = [self[f"expert_{i}"] for i in range(self.num_experts)]
    wi = torch.stack([e.wi.weight for e in experts])  # [E, d_ff, d_model]
    wo = torch.stack([e.wo.weight for e in experts])  # [E, d_model, d_ff]
    h = experts[0].act(torch.einsum("nd,efd->enf", hidden_states, wi))
    h = experts[0].dropout(h)
    y = torch.einsum("enf,edf->end", h, wo)  # [E, N, d_model]
    # selected_experts: one-hot [N, 1, E] times the capacity mask (an all-zero row = token dropped, output 0);
    # routing_weights: the top-1 probability [N, 1], applied in float32 as transformers does.
    sel = selected_experts[:, 0, :]
    keep = sel.sum(-1, keepdim=True).to(routing_weights.dtype)
    out = y[sel.argmax(-1), torch.arange(y.shape[1], device=y.device)] * (routing_weights * keep)
    return out.to(hidden_states.dtype)


class RouterLosses:
    """Router z-loss and load-balancing loss, from the real router logits.

    transformers 5.17's own path (`output_router_logits=True`) is broken for this model: the router's third output,
    which the output recorder captures as "router_logits", is the top-1 probability ([N, 1]), not the logits, and
    `_unpack_router_logits` then finds nothing and fails on `torch.cat([])`. So we hook each router's classifier
    and compute the same two losses as `router_z_loss_func` / `load_balancing_loss_func`:
      z   = mean over tokens of logsumexp(logits)^2
      aux = E^2 * mean_e(fraction of tokens routed to e * mean router probability of e)   (1.0 when balanced)
    Differences, both deliberate: padding tokens are excluded (transformers includes them), and the balance
    statistics are taken per layer over the whole batch rather than per sequence over all layers concatenated.
    Each is averaged over the layers of a stack, then encoder + decoder are summed, as transformers sums them.
    """

    def __init__(self, model):
        self.logits = {"encoder": [], "decoder": []}
        for name, module in model.named_modules():
            if isinstance(module, st.SwitchTransformersTop1Router):
                stack = name.split(".")[0]
                module.classifier.register_forward_hook(
                    lambda mod, inp, out, stack=stack: self.logits[stack].append(out) if self.active else None)
        self.active = False

    def start(self):
        self.logits = {"encoder": [], "decoder": []}
        self.active = True

    def compute(self, masks):
        """masks: {"encoder": bool [B*S], "decoder": bool [B*T]}. Returns (z, aux) summed over the two stacks."""
        self.active = False
        z_total, aux_total = 0.0, 0.0
        for stack, logits_list in self.logits.items():
            if not logits_list:
                continue
            # Masked means via weights, not boolean indexing: indexing would cost a host-device sync per layer.
            w = masks[stack].float()
            w = w / w.sum()
            zs, auxs = [], []
            for logits in logits_list:
                logits = logits.float()  # [N, E], N = batch * length
                zs.append((torch.logsumexp(logits, dim=-1).pow(2) * w).sum())
                probs = logits.softmax(dim=-1)
                num_experts = probs.shape[-1]
                frac = (F.one_hot(probs.argmax(dim=-1), num_experts).float() * w[:, None]).sum(0)
                auxs.append((frac * (probs * w[:, None]).sum(0)).mean() * num_experts ** 2)
            z_total = z_total + torch.stack(zs).mean()
            aux_total = aux_total + torch.stack(auxs).mean()
        self.logits = {"encoder": [], "decoder": []}
        return z_total, aux_total


def fp32_routers(model, device_type):
    """Run the routers outside autocast: transformers casts the router input to float32 ("selective precision",
    Switch Transformer paper), but under autocast its Linear would still run in bf16."""
    for module in model.modules():
        if isinstance(module, st.SwitchTransformersTop1Router):
            orig = module.forward

            def forward(hidden_states, _orig=orig):
                with torch.autocast(device_type=device_type, enabled=False):
                    return _orig(hidden_states)

            module.forward = forward


def fp16_bytes(model):
    return sum(p.numel() for p in model.parameters()) * 2


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------

def encode_all(sp, texts, threads):
    """Batch-encode with SentencePiece's threaded API; returns (flat int16 ids, int32 lengths)."""
    assert sp.get_piece_size() <= 32768, "ids are stored as int16"
    try:
        ids = sp.encode(texts, out_type=int, num_threads=threads)
    except TypeError:  # very old sentencepiece: no num_threads
        ids = sp.encode(texts, out_type=int)
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int16, count=int(lengths.sum()))
    return flat, lengths


class Corpus:
    """Pre-tokenized pairs. Example e = 2*pair + d; d=0: <2X> en -> X, d=1: <2en> X -> en.
    Direction index = 2*lang + d, so there are 2*len(langs) directions."""

    def __init__(self, path, sp, langs, max_len, threads, cache_dir=None, limit_per_lang=None, seed=0):
        t0 = time.time()
        key = None
        if cache_dir:
            st_ = os.stat(path)
            h = hashlib.sha1(f"{os.path.abspath(path)}|{st_.st_size}|{st_.st_mtime_ns}|{max_len}|{limit_per_lang}|"
                             f"{seed}|{','.join(langs)}".encode())
            h.update(sp.serialized_model_proto())
            key = os.path.join(cache_dir, f"{os.path.basename(path)}.{h.hexdigest()[:16]}.npz")
        if key and os.path.exists(key):
            z = np.load(key)
            self.lang, self.ids, self.en_off, self.en_len, self.x_off, self.x_len = (
                z["lang"], z["ids"], z["en_off"], z["en_len"], z["x_off"], z["x_len"])
            how = f"cache {key}"
        else:
            lang_index = {l: i for i, l in enumerate(langs)}
            lang, en, tgt = [], [], []
            skipped = 0
            with gzip.open(path, "rt", encoding="utf-8") as f:
                for line in f:
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) != 3 or parts[0] not in lang_index or not parts[1].strip() or not parts[2].strip():
                        skipped += 1
                        continue
                    lang.append(lang_index[parts[0]])
                    en.append(parts[1])
                    tgt.append(parts[2])
            lang = np.array(lang, dtype=np.int8)
            if limit_per_lang:  # a fixed random subset per language (validation)
                keep = []
                rng = np.random.default_rng(seed)
                for l in range(len(langs)):
                    idx = np.flatnonzero(lang == l)
                    keep.append(np.sort(rng.permutation(idx)[:limit_per_lang]))
                keep = np.concatenate(keep)
                lang, en, tgt = lang[keep], [en[i] for i in keep], [tgt[i] for i in keep]
            en_flat, en_len = encode_all(sp, en, threads)
            x_flat, x_len = encode_all(sp, tgt, threads)
            # Both directions of a pair are kept or dropped together: tag + text + eos <= max_len on both sides.
            ok = (np.maximum(en_len, x_len) + 2 <= max_len) & (en_len > 0) & (x_len > 0)
            if skipped:
                log(f"{path}: skipped {skipped} malformed/unknown-language lines")
            log(f"{path}: {len(lang)} pairs, {int((~ok).sum())} dropped (longer than {max_len} tokens or empty)")
            en_off = np.concatenate([[0], np.cumsum(en_len[:-1], dtype=np.int64)])
            x_off = np.concatenate([[0], np.cumsum(x_len[:-1], dtype=np.int64)]) + len(en_flat)
            self.ids = np.concatenate([en_flat, x_flat])
            self.lang, self.en_off, self.en_len, self.x_off, self.x_len = (
                lang[ok], en_off[ok], en_len[ok], x_off[ok], x_len[ok])
            how = "tokenized"
            if key:
                os.makedirs(cache_dir, exist_ok=True)
                tmp = key + ".tmp.npz"
                np.savez(tmp, lang=self.lang, ids=self.ids, en_off=self.en_off, en_len=self.en_len,
                         x_off=self.x_off, x_len=self.x_len)
                os.replace(tmp, key)
        self.langs = langs
        self.pairs_per_lang = np.bincount(self.lang, minlength=len(langs))
        self.lang_pairs = [np.flatnonzero(self.lang == l) for l in range(len(langs))]
        # Per-example lengths (with tag/eos) for bucketing: src = 1 + text + 1, tgt = text + 1.
        n = len(self.lang)
        self.src_len = np.empty(2 * n, dtype=np.int32)
        self.tgt_len = np.empty(2 * n, dtype=np.int32)
        self.src_len[0::2], self.tgt_len[0::2] = self.en_len + 2, self.x_len + 1
        self.src_len[1::2], self.tgt_len[1::2] = self.x_len + 2, self.en_len + 1
        log(f"{path}: {n} pairs ({how}, {time.time() - t0:.1f}s), "
            f"{int(self.tgt_len.sum())} target tokens per epoch of {2 * n} examples; pairs per language: "
            + ", ".join(f"{l} {c}" for l, c in zip(langs, self.pairs_per_lang)))

    def example(self, e, tags, en_tag):
        p, d = divmod(int(e), 2)
        en = self.ids[self.en_off[p]:self.en_off[p] + self.en_len[p]]
        x = self.ids[self.x_off[p]:self.x_off[p] + self.x_len[p]]
        if d == 0:
            return tags[self.lang[p]], en, x
        return en_tag, x, en

    def batch(self, examples, tags, en_tag):
        """Padded int64 arrays: input_ids [B,S] (pad 0), labels [B,T] (-100 on padding)."""
        b = len(examples)
        s = int(self.src_len[examples].max())
        t = int(self.tgt_len[examples].max())
        src = np.zeros((b, s), dtype=np.int64)
        lab = np.full((b, t), -100, dtype=np.int64)
        for i, e in enumerate(examples):
            tag, a, c = self.example(e, tags, en_tag)
            src[i, 0] = tag
            src[i, 1:1 + len(a)] = a
            src[i, 1 + len(a)] = EOS
            lab[i, :len(c)] = c
            lab[i, len(c)] = EOS
        return src, lab


def token_buckets(examples, src_len, tgt_len, max_tokens):
    """Split examples (already in length order) into batches whose padded size, batch size times the longer of
    the two padded lengths, stays within max_tokens."""
    batches, start, longest = [], 0, 0
    for i, e in enumerate(examples):
        longest_i = max(longest, src_len[e], tgt_len[e])
        if i > start and longest_i * (i - start + 1) > max_tokens:
            batches.append(examples[start:i])
            start, longest_i = i, max(src_len[e], tgt_len[e])
        longest = longest_i
    batches.append(examples[start:])
    return batches


class BalancedSampler:
    """Endless stream of token-bucketed batches, balanced across directions.

    Each chunk draws `per_dir` examples from every direction (each direction walks its own reshuffled cycle over
    its language's pairs, so smaller languages are upsampled to the others' rate), sorts the chunk by length,
    buckets it and shuffles the bucket order. The whole state is a few integers (the permutations are re-derived
    from the seed), so `--resume` continues the exact same data order.
    """

    def __init__(self, corpus, per_dir, max_tokens, seed):
        self.c, self.per_dir, self.max_tokens, self.seed = corpus, per_dir, max_tokens, seed
        self.n_dirs = 2 * len(corpus.langs)
        self.state = dict(chunk=0, epochs=[0] * self.n_dirs, cursors=[0] * self.n_dirs, consumed=0)
        self._perm_cache = {}
        self.chunk_batches = 1

    def _perm(self, d, epoch):
        if self._perm_cache.get(d, (None,))[0] != epoch:
            n = len(self.c.lang_pairs[d // 2])
            self._perm_cache[d] = (epoch, np.random.default_rng([self.seed, d, epoch]).permutation(n))
        return self._perm_cache[d][1]

    def _chunk(self, state):
        """Examples of chunk `state['chunk']`, drawn from (epochs, cursors); returns (batches, next state)."""
        epochs, cursors = list(state["epochs"]), list(state["cursors"])
        picked = []
        for d in range(self.n_dirs):
            pairs = self.c.lang_pairs[d // 2]
            need = self.per_dir
            while need > 0:
                perm = self._perm(d, epochs[d])
                take = min(need, len(perm) - cursors[d])
                picked.append(2 * pairs[perm[cursors[d]:cursors[d] + take]] + (d % 2))
                cursors[d] += take
                need -= take
                if cursors[d] == len(perm):
                    epochs[d], cursors[d] = epochs[d] + 1, 0
        ex = np.concatenate(picked)
        rng = np.random.default_rng([self.seed, 1 << 20, state["chunk"]])
        ex = ex[rng.permutation(len(ex))]  # random tie-breaking within equal lengths
        ex = ex[np.lexsort((self.c.src_len[ex], self.c.tgt_len[ex]))]
        batches = token_buckets(ex, self.c.src_len, self.c.tgt_len, self.max_tokens)
        batches = [batches[i] for i in rng.permutation(len(batches))]
        nxt = dict(chunk=state["chunk"] + 1, epochs=epochs, cursors=cursors, consumed=0)
        return batches, nxt

    def __iter__(self):
        while True:
            batches, nxt = self._chunk(self.state)
            self.chunk_batches = len(batches)
            while self.state["consumed"] < len(batches):
                b = batches[self.state["consumed"]]
                self.state["consumed"] += 1
                yield b
            self.state = nxt


def to_device(src, lab, device):
    src_t, lab_t = torch.from_numpy(src), torch.from_numpy(lab)
    if device.type == "cuda":
        src_t, lab_t = src_t.pin_memory(), lab_t.pin_memory()
    return src_t.to(device, non_blocking=True), lab_t.to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------

def forward_losses(model, router_losses, src, lab, label_smoothing):
    """Returns (total loss, summed token NLL, token count, z, aux). The CE is computed here rather than by
    transformers so that label smoothing and the unsmoothed NLL come from one log-softmax."""
    attn = (src != PAD).long()
    dec_in = model._shift_right(lab)  # decoder_start (0) + labels[:-1], -100 -> pad
    router_losses.start()
    logits = model(input_ids=src, attention_mask=attn, decoder_input_ids=dec_in).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = lab != -100
    ntok = mask.sum()
    nll = -logp.gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    nll_sum = (nll * mask).sum()
    loss = nll_sum / ntok
    if label_smoothing > 0:
        smooth = (-logp.mean(-1) * mask).sum() / ntok
        loss = (1 - label_smoothing) * loss + label_smoothing * smooth
    z, aux = router_losses.compute({"encoder": attn.bool().reshape(-1), "decoder": mask.reshape(-1)})
    cfg = model.config
    loss = loss + cfg.router_z_loss_coef * z + cfg.router_aux_loss_coef * aux
    return loss, nll_sum, ntok, z, aux


@torch.no_grad()
def validate(model, router_losses, corpus, tags, en_tag, device, amp_ctx, max_tokens):
    """Teacher-forced CE (nats per target token, no smoothing) per direction and overall."""
    was_training = model.training
    model.eval()
    n_dirs = 2 * len(corpus.langs)
    nll = torch.zeros(n_dirs, dtype=torch.float64)
    cnt = torch.zeros(n_dirs, dtype=torch.float64)
    ex = np.arange(2 * len(corpus.lang))
    ex = ex[np.lexsort((corpus.src_len[ex], corpus.tgt_len[ex]))]
    for b in token_buckets(ex, corpus.src_len, corpus.tgt_len, max_tokens):
        src, lab = corpus.batch(b, tags, en_tag)
        src_t, lab_t = to_device(src, lab, device)
        with amp_ctx():
            attn = (src_t != PAD).long()
            logits = model(input_ids=src_t, attention_mask=attn, decoder_input_ids=model._shift_right(lab_t)).logits
        tok_nll = F.cross_entropy(logits.float().transpose(1, 2), lab_t, ignore_index=-100, reduction="none")
        per_ex = tok_nll.sum(1).double().cpu()
        per_cnt = (lab_t != -100).sum(1).double().cpu()
        dirs = torch.from_numpy(2 * corpus.lang[b // 2].astype(np.int64) + b % 2)
        nll.index_add_(0, dirs, per_ex)
        cnt.index_add_(0, dirs, per_cnt)
    model.train(was_training)
    per_dir = (nll / cnt.clamp(min=1)).tolist()
    return float(nll.sum() / cnt.sum()), per_dir


def direction_names(langs):
    names = []
    for l in langs:
        names += [f"en-{l}", f"{l}-en"]
    return names


def lr_at(args, step, train_time):
    warm = min(1.0, step / max(1, args.warmup_steps))
    if args.restart_step is not None:  # warm restart: Adam's moments start again from zero
        warm = min(warm, (step - args.restart_step) / max(1, args.rewarmup_steps))
    if args.schedule == "invsqrt":
        return args.lr * warm * min(1.0, math.sqrt(args.warmup_steps / max(step, 1)))
    # cosine down to min_lr_ratio * lr, over --total-steps if given (reproducible), else over the cumulative
    # training time of all chained calls (adapts to the machine's speed, at the price of run-to-run variation)
    if args.total_steps:
        frac = min(1.0, step / args.total_steps)
    else:
        frac = min(1.0, train_time / max(1.0, args.total_time_s))
    decay = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    return args.lr * warm * decay


def dir_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def save(model, optimizer, sampler, args, step, train_time, history, langs):
    t0 = time.time()
    # fp32 training state first (the bigger, more precious file), written atomically.
    os.makedirs(args.state_out, exist_ok=True)
    state = dict(
        model=model.state_dict(), optimizer=optimizer.state_dict(), config=model.config.to_dict(),
        step=step, train_time=train_time, sampler=copy.deepcopy(sampler.state), data_seed=sampler.seed,
        langs=langs, history=history, args=vars(args),
        rng=dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                 cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
    )
    # The same progress, tiny and without weights, for a warm restart from the shipped model on a fresh machine.
    with open(os.path.join(args.state_out, "train_progress.json"), "w") as f:
        json.dump(dict(step=step, train_time=train_time, sampler=state["sampler"], data_seed=sampler.seed,
                       langs=langs, history=history), f)
    tmp = os.path.join(args.state_out, "train_state.pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(args.state_out, "train_state.pt"))

    # Shipped model folder: fp16 safetensors + config + generation_config + spiece.model (+ languages.json).
    os.makedirs(args.out, exist_ok=True)
    # A fresh model from the state dict: the training model carries patched forwards and hooks.
    half = SwitchTransformersForConditionalGeneration(model.config)
    half.load_state_dict({k: v.to("cpu") for k, v in model.state_dict().items()})
    half.to(torch.float16).save_pretrained(args.out)
    shutil.copyfile(args.spm, os.path.join(args.out, "spiece.model"))
    if args.languages_json:
        shutil.copyfile(args.languages_json, os.path.join(args.out, "languages.json"))
    assert os.path.exists(os.path.join(args.out, "model.safetensors")), "expected a single model.safetensors"
    size = dir_size(args.out)
    log(f"saved step {step}: {args.out} ({size:,} bytes), {args.state_out}/train_state.pt "
        f"({os.path.getsize(os.path.join(args.state_out, 'train_state.pt')):,} bytes) in {time.time() - t0:.1f}s")
    assert size <= args.max_model_bytes, f"model folder {size:,} bytes > limit {args.max_model_bytes:,}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = ap.add_argument_group("data")
    g.add_argument("--train", default="build/corpus/train.tsv.gz",
                   help="training pairs: lang<TAB>english<TAB>target, gzipped")
    g.add_argument("--valid", default="build/corpus/valid.tsv.gz", help="validation pairs, same format")
    g.add_argument("--spm", default="models/demo/spiece.model", help="SentencePiece model (copied into --out)")
    g.add_argument("--langs", default="de,fr,es,it,pt_BR,ru,uk,sv,ja,zh_CN",
                   help="corpus languages (comma-separated); each needs a <2X> piece, and <2en> must exist")
    g.add_argument("--max-len", type=int, default=64, help="drop pairs whose source or target exceeds this")
    g.add_argument("--cache-dir", default="build/train_cache", help="tokenized-corpus cache ('' to disable)")
    g.add_argument("--threads", type=int, default=os.cpu_count(), help="SentencePiece encode threads")
    g.add_argument("--valid-pairs-per-lang", type=int, default=200, help="validation subsample (x2 directions)")
    g = ap.add_argument_group("model")
    g.add_argument("--tiny", action="store_true", help="tiny architecture for smoke tests")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a SwitchTransformersConfig field, e.g. --set d_ff=448 (repeatable)")
    g.add_argument("--router-jitter", type=float, default=0.0,
                   help="router input jitter while training (transformers default 0.01)")
    g.add_argument("--router-init-std", type=float, default=None,
                   help="router weight init std; default sqrt(0.1/d_model). transformers inits it with std 1.0, "
                        "which saturates the router softmax from the start (top-1 prob ~1, vanishing gradients)")
    g.add_argument("--max-model-bytes", type=int, default=29_000_000,
                   help="limit for the shipped folder (fp16 weights + spiece.model + json)")
    g.add_argument("--moe-impl", choices=["dense", "hf"], default="dense",
                   help="training MoE kernel: dense = sync-free masked batched matmuls (default), hf = transformers'")
    g = ap.add_argument_group("optimization")
    g.add_argument("--seed", type=int, default=1, help="python/numpy/torch seed, data order, validation subsample")
    g.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate")
    g.add_argument("--warmup-steps", type=int, default=500, help="linear warmup")
    g.add_argument("--schedule", choices=["cosine", "invsqrt"], default="cosine", help="decay after warmup")
    g.add_argument("--total-time-s", type=float, default=None,
                   help="cosine: training seconds over all chained calls at which lr reaches its floor "
                        "(default: this call's budget minus setup); pass the same value to every call")
    g.add_argument("--total-steps", type=int, default=None,
                   help="cosine: decay over this many steps instead of over time (deterministic)")
    g.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine floor, as a fraction of --lr")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decay, matrices other than the embedding")
    g.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    g.add_argument("--label-smoothing", type=float, default=0.1,
                   help="in the training loss only (logged ce is unsmoothed)")
    g.add_argument("--max-tokens", type=int, default=65536,
                   help="batch size in padded tokens: sentences x max(longest source, longest target)")
    g.add_argument("--chunk-per-dir", type=int, default=2000, help="examples per direction per shuffling chunk")
    g.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto", help="auto: bf16 on CUDA only")
    g = ap.add_argument_group("run")
    g.add_argument("--time-budget-s", type=float, default=480,
                   help="stop training this many seconds after process start, then validate and save")
    g.add_argument("--max-steps", type=int, default=None, help="also stop at this (global) step")
    g.add_argument("--log-every", type=int, default=100, help="steps between log lines")
    g.add_argument("--valid-every", type=int, default=1000, help="steps between validations (one more at the end)")
    g.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from DIR/train_state.pt (exact), or warm-restart from a model folder DIR "
                        "(+ DIR/train_progress.json if present)")
    g.add_argument("--rewarmup-steps", type=int, default=200, help="lr re-warmup after a warm restart")
    g.add_argument("--out", default="build/train/model", help="shipped model folder (fp16)")
    g.add_argument("--state-out", default=None, help="folder for train_state.pt (default: OUT-state)")
    g.add_argument("--languages-json", default=None, help="copied into --out as languages.json")
    g.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    args = ap.parse_args()
    args.state_out = args.state_out or args.out.rstrip("/") + "-state"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    use_bf16 = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        log(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16 autocast {use_bf16}")
    else:
        log(f"device cpu ({torch.get_num_threads()} threads), torch {torch.__version__}, bf16 autocast {use_bf16}")

    def amp_ctx():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # ---- tokenizer and data
    sp = spm.SentencePieceProcessor(model_file=args.spm)
    langs = args.langs.split(",")
    tags = np.array([sp.piece_to_id(f"<2{l}>") for l in langs])
    en_tag = sp.piece_to_id("<2en>")
    for l, t in zip(langs + ["en"], list(tags) + [en_tag]):
        assert sp.id_to_piece(int(t)) == f"<2{l}>", f"{args.spm} has no piece <2{l}>"
    assert sp.pad_id() == PAD and sp.eos_id() == EOS, "expected pad 0 / eos 1"
    train = Corpus(args.train, sp, langs, args.max_len, args.threads, args.cache_dir or None)
    valid = Corpus(args.valid, sp, langs, args.max_len, args.threads, args.cache_dir or None,
                   limit_per_lang=args.valid_pairs_per_lang, seed=args.seed)
    assert (train.pairs_per_lang > 0).all(), "a language has no training pairs"

    # ---- model, optimizer, state
    # Two ways to continue: DIR/train_state.pt (exact: fp32 weights, optimizer, data order, RNG), or a shipped
    # model folder (DIR/model.safetensors, fp16) for a machine that got no train_state.pt: weights from the model,
    # a fresh optimizer with a short re-warmup, and step/time/data position from DIR/train_progress.json if there.
    resume, warm = None, None
    if args.resume and os.path.exists(os.path.join(args.resume, "train_state.pt")):
        resume = torch.load(os.path.join(args.resume, "train_state.pt"), map_location="cpu", weights_only=False)
        config = SwitchTransformersConfig(**{k: v for k, v in resume["config"].items()
                                             if k not in ("architectures", "transformers_version")})
        assert resume["langs"] == langs, f"checkpoint languages {resume['langs']} != {langs}"
    elif args.resume and os.path.exists(os.path.join(args.resume, "config.json")):
        warm = SwitchTransformersForConditionalGeneration.from_pretrained(args.resume, dtype=torch.float32)
        config = warm.config
    elif args.resume:
        raise SystemExit(f"--resume {args.resume}: neither train_state.pt nor a model folder (config.json)")
    else:
        config = model_config(args, sp.get_piece_size())
    if args.resume and (args.tiny or args.set):
        log("note: --tiny/--set ignored, the architecture comes from the checkpoint")
    assert config.vocab_size >= sp.get_piece_size()
    model = SwitchTransformersForConditionalGeneration(config)
    if resume is not None:
        model.load_state_dict(resume["model"])
    elif warm is not None:
        model.load_state_dict(warm.state_dict())
        warm = True  # drop the loaded copy, keep the flag
    else:
        std = args.router_init_std if args.router_init_std is not None else math.sqrt(0.1 / config.d_model)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, st.SwitchTransformersTop1Router):
                    m.classifier.weight.normal_(0.0, std)
    n_params = sum(p.numel() for p in model.parameters())
    spm_bytes = os.path.getsize(args.spm)
    expected = fp16_bytes(model) + spm_bytes + 32_768  # + safetensors header (~17 KB) and json files
    log(f"model: {n_params:,} parameters, fp16 weights {fp16_bytes(model):,} bytes, + spiece.model {spm_bytes:,}"
        f" = ~{expected:,} bytes (limit {args.max_model_bytes:,}); "
        f"d_model {config.d_model}, d_ff {config.d_ff}, layers {config.num_layers}+{config.num_decoder_layers}, "
        f"experts {config.num_experts}, vocab {config.vocab_size}")
    assert expected <= args.max_model_bytes, "model too large for the size limit: lower d_ff (--set d_ff=...)"

    model.to(device)
    model.train()
    if args.moe_impl == "dense":
        # Instance-level override: only this model object (and its saved copy) are affected.
        for m in model.modules():
            if isinstance(m, st.SwitchTransformersExperts):
                m.forward = dense_experts_forward.__get__(m)
    fp32_routers(model, device.type)
    router_losses = RouterLosses(model)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "shared" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "shared" not in n)]
    optimizer = torch.optim.AdamW(
        [dict(params=decay, weight_decay=args.weight_decay), dict(params=no_decay, weight_decay=0.0)],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-8, **({"fused": True} if device.type == "cuda" else {}))

    sampler = BalancedSampler(train, args.chunk_per_dir, args.max_tokens, args.seed)
    step, train_time, history = 0, 0.0, []
    args.restart_step = None
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step, train_time, history = resume["step"], resume["train_time"], resume["history"]
        sampler.seed = resume["data_seed"]
        sampler.state = resume["sampler"]
        rng = resume["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        log(f"resumed from {args.resume}/train_state.pt: step {step}, {train_time:.0f}s trained, data chunk "
            f"{sampler.state['chunk']} batch {sampler.state['consumed']}")
        del resume
    elif warm:
        progress_path = os.path.join(args.resume, "train_progress.json")
        if os.path.exists(progress_path):
            with open(progress_path) as f:
                progress = json.load(f)
            assert progress["langs"] == langs, f"checkpoint languages {progress['langs']} != {langs}"
            step, train_time, history = progress["step"], progress["train_time"], progress["history"]
            sampler.seed, sampler.state = progress["data_seed"], progress["sampler"]
        args.restart_step = step
        log(f"warm restart from the model in {args.resume} (fresh optimizer, re-warmup {args.rewarmup_steps} "
            f"steps): step {step}, {train_time:.0f}s trained"
            + ("" if os.path.exists(progress_path) else " (no train_progress.json: schedule and data restart)"))
    if args.total_time_s is None:
        if step > 0 and args.schedule == "cosine" and not args.total_steps:
            log("warning: resuming a cosine schedule without --total-time-s: it is re-stretched over this call")
        args.total_time_s = train_time + max(1.0, args.time_budget_s - (time.time() - T_START))

    names = direction_names(langs)
    epoch_examples = 2 * len(train.lang)

    def run_validation():
        ce, per_dir = validate(model, router_losses, valid, tags, en_tag, device, amp_ctx, args.max_tokens)
        history.append(dict(step=step, valid_ce=ce, train_time=train_time))
        log(f"valid step {step}: ce {ce:.4f} (ppl {math.exp(ce):.2f}) | "
            + " ".join(f"{n} {v:.2f}" for n, v in zip(names, per_dir)))
        return ce

    # ---- loop
    log(f"training: budget {args.time_budget_s:.0f}s from start, {args.max_tokens} tokens/batch, "
        f"lr {args.lr} ({args.schedule}, warmup {args.warmup_steps}, total "
        f"{f'{args.total_steps} steps' if args.total_steps else f'{args.total_time_s:.0f}s'}), "
        f"label smoothing {args.label_smoothing}, moe {args.moe_impl}")
    acc = dict(tok=0.0, steps=0)
    acc_t = {k: torch.zeros((), device=device, dtype=torch.float64) for k in ("loss", "nll", "z", "aux", "gnorm")}
    tgt_tokens = src_tokens = 0
    t_log = time.time()
    loop_start_time = train_time
    t_loop = time.time()
    stop_reason = None
    batches = iter(sampler)
    while True:
        # Check before drawing the next batch, so that the saved sampler state points at the first unused one.
        if time.time() - T_START >= args.time_budget_s:
            stop_reason = "time budget"
            break
        if args.max_steps is not None and step >= args.max_steps:
            stop_reason = "max steps"
            break
        batch = next(batches)
        src, lab = train.batch(batch, tags, en_tag)
        src_t, lab_t = to_device(src, lab, device)
        lr = lr_at(args, step + 1, train_time)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with amp_ctx():
            loss, nll_sum, ntok, z, aux = forward_losses(model, router_losses, src_t, lab_t, args.label_smoothing)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        # accumulate on the device; only read back at log time (no per-step sync)
        acc_t["loss"] += loss.detach()
        acc_t["nll"] += nll_sum.detach()
        acc_t["z"] += z.detach()
        acc_t["aux"] += aux.detach()
        acc_t["gnorm"] += gnorm.detach()
        n_tgt = int((lab != -100).sum())
        tgt_tokens += n_tgt
        src_tokens += int((src != PAD).sum())
        acc["tok"] += n_tgt
        acc["steps"] += 1
        train_time = loop_start_time + (time.time() - t_loop)
        if step % args.log_every == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.time() - t_log
            k = acc["steps"]
            v = {key: float(t) for key, t in acc_t.items()}
            log(f"step {step} | ep {sampler_epochs(sampler, train):.2f} | lr {lr:.2e} | "
                f"tgt tok/s {tgt_tokens / dt:,.0f} (src+tgt {(tgt_tokens + src_tokens) / dt:,.0f}) | "
                f"loss {v['loss'] / k:.4f} | ce {v['nll'] / acc['tok']:.4f} | z {v['z'] / k:.3f} | "
                f"aux {v['aux'] / k:.4f} | gnorm {v['gnorm'] / k:.2f} | {dt / k * 1000:.0f} ms/step")
            for t in acc_t.values():
                t.zero_()
            acc = dict(tok=0.0, steps=0)
            tgt_tokens = src_tokens = 0
            t_log = time.time()
        if step % args.valid_every == 0:
            run_validation()
            t_log = time.time()  # do not count validation in tokens/s
    log(f"stopped ({stop_reason}) at step {step}, {train_time:.0f}s of training in total, "
        f"{sampler_epochs(sampler, train):.2f} epochs")
    if not history or history[-1]["step"] != step:
        run_validation()
    save(model, optimizer, sampler, args, step, train_time, history, langs)
    log("done")


def sampler_epochs(sampler, corpus):
    """Examples drawn so far / examples in one epoch (batches of the current chunk counted pro rata)."""
    st_ = sampler.state
    drawn = sum(e * len(corpus.lang_pairs[d // 2]) + c
                for d, (e, c) in enumerate(zip(st_["epochs"], st_["cursors"])))
    drawn += st_["consumed"] / sampler.chunk_batches * sampler.per_dir * sampler.n_dirs
    return drawn / (2 * len(corpus.lang))


if __name__ == "__main__":
    main()
