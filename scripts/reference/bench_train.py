"""Training speed of the PyTorch reference (eager), for scripts/bench-train.sh.

    .venv/bin/python scripts/reference/bench_train.py CONFIG.toml [--steps N] [--warmup W]
        [--threads T] [--sdpa | --no-sdpa] [--compile [--simdlen BITS]] [--set section.key=value ...]

CONFIG is one of our run configs: [model] (vocab_size must be given, or a [data] tokenizer),
[train] seq_len / micro_batch, [optim]. Trains on the config's [data] train shards (llm.c .bin
format, random windows) with AdamW (same betas, eps, weight decay, global-norm clipping) and
prints one JSON line: tokens/s over the steps after the warmup, and the mean step time.
`--sdpa` (default) uses torch.nn.functional.scaled_dot_product_attention, the fastest eager
attention a PyTorch user would write; `--no-sdpa` the reference's explicit softmax.
`--compile` runs the model through `torch.compile` (inductor; its compilation happens in the
warmup steps, so give enough of them). `--simdlen 256` makes inductor generate AVX2 code on an
AVX-512 CPU (scripts/bench-train.sh --avx2; torch 2.9.0's compiled code dies with SIGBUS under
ATEN_CPU_CAPABILITY=avx2, which would otherwise say the same).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import model as ref  # noqa: E402


def load_shards(pattern: str) -> list[np.ndarray]:
    out = []
    for path in sorted(glob.glob(pattern)):
        header = np.fromfile(path, dtype="<i4", count=256)
        dtype = {20240520: np.uint16, 20240801: np.uint32}[int(header[0])]
        out.append(np.memmap(path, dtype=dtype, mode="r", offset=256 * 4, shape=(int(header[2]),)))
    if not out:
        sys.exit(f"bench_train: no shards match {pattern}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sdpa", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--simdlen", type=int, default=None)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with open(args.config, "rb") as f:
        run = tomllib.load(f)
    for assignment in args.set:
        key, value = assignment.split("=", 1)
        section, name = key.split(".")
        try:
            value = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            pass
        run.setdefault(section, {})[name] = value
    section = dict(run["model"])
    if "vocab_size" not in section:
        with open(run["data"]["tokenizer"]) as f:
            tok = json.load(f)
        section["vocab_size"] = len(tok["model"]["vocab"]) + sum(
            1 for t in tok.get("added_tokens", []) if t["content"] not in tok["model"]["vocab"])
    cfg = ref.Config.from_dict(section)
    train, optim = run.get("train", {}), run.get("optim", {})
    seq = train.get("seq_len", cfg.max_seq_len)
    batch = train.get("micro_batch", 8)
    accum = train.get("global_batch", batch) // batch

    if args.sdpa:
        def sdpa(q, k, v, scale):
            B, H, T, _ = q.shape
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(1, 2).reshape(B, T, -1)
        ref.causal_attention = sdpa

    model = ref.LM(cfg)
    ref.init_weights(model)
    if args.simdlen is not None:
        import torch._inductor.config as inductor_config
        inductor_config.cpp.simdlen = args.simdlen
    forward = torch.compile(model) if args.compile else model
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed_tokens" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.get("weight_decay", 0.1)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.get("lr", 1e-3), betas=(optim.get("beta1", 0.9), optim.get("beta2", 0.95)),
        eps=optim.get("eps", 1e-8))
    clip = optim.get("grad_clip", 1.0)

    shards = load_shards(run["data"]["train"])
    rng = np.random.default_rng(0)

    def batch_of() -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(batch):
            s = shards[rng.integers(len(shards))]
            i = rng.integers(len(s) - seq - 1)
            rows.append(np.asarray(s[i:i + seq + 1], dtype=np.int64))
        w = torch.from_numpy(np.stack(rows))
        return w[:, :-1], w[:, 1:]

    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        for _ in range(accum):
            x, y = batch_of()
            _, loss = forward(x, y)
            (loss / accum).backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t0)
    steady = times[args.warmup:]
    tokens = batch * accum * seq
    print(json.dumps({
        "impl": ("pytorch-compile" if args.compile else "pytorch-eager") + ("-sdpa" if args.sdpa else ""),
        "threads": args.threads, "torch": torch.__version__,
        "tokens_per_step": tokens, "steps": len(steady),
        "step_s": sum(steady) / len(steady), "tokens_per_s": tokens * len(steady) / sum(steady),
        "params": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
