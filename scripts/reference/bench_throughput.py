"""The PyTorch peer of `mla bench throughput`: the same batched decode in eager PyTorch, with
its own preallocated KV cache, at the same arms, batches and context.

    python scripts/reference/bench_throughput.py bench-out/throughput.json [--threads N]

Reads the report `mla bench throughput` wrote (each arm's [model] section, its batches, the
context and new tokens), builds each arm with model.py's modules (random weights: speed does
not depend on them), and for every batch: fills a cache of `context` tokens a sequence with
`context - new_tokens` prefilled tokens (every sequence the same random prompt, prefilled once
through the reference forward and copied), then times `new_tokens` greedy decode steps of the
whole batch. The cache is what ours holds: K/V per K/V head for mha/gqa/mqa ([B, kv, T, hd]
each), for MLA only the normed latent and the rotated k_pe ([B, T, kv_lora + rope]) decoded
with W_UK / W_UV absorbed, as model.py's `absorbed_decode_logits` (and DeepSeek's inference
code) does, but batched and written in place into preallocated buffers. The fastest of the
runs counts, as in ours. Writes `throughput_torch.json` next to the report and prints ours and
torch's tokens/s side by side with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as ref  # noqa: E402


def config_of(section: dict) -> ref.Config:
    """model.py's Config from our [model] section (keys it does not know go to `extra`)."""
    d = {k: v for k, v in section.items() if v is not None and k != "preset"}
    return ref.Config.from_dict(d)


class Decoder:
    """One arm's batched decode step over a preallocated cache of `capacity` tokens a row."""

    def __init__(self, model: ref.LM, batch: int, capacity: int):
        cfg = model.cfg
        self.model, self.cfg, self.batch = model, cfg, batch
        self.cos, self.sin = ref.rope_tables(cfg, capacity)
        self.scale = cfg.softmax_scale()
        self.head = model.model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
        L = cfg.n_layers
        if cfg.is_mla:
            width = cfg.kv_lora_rank + cfg.qk_rope_head_dim
            self.latents = [torch.zeros(batch, capacity, width) for _ in range(L)]
            # kv_b_proj per head, HF layout [out, in]: [h, nope + v, r]
            self.absorbed = []
            for layer in model.model.layers:
                a = layer.self_attn
                w = a.kv_b_proj.weight.view(cfg.n_heads, cfg.qk_nope_head_dim + cfg.v_head_dim,
                                            cfg.kv_lora_rank)
                self.absorbed.append((w[:, :cfg.qk_nope_head_dim], w[:, cfg.qk_nope_head_dim:]))
        else:
            shape = (batch, cfg.n_kv_heads, capacity, cfg.head_dim)
            self.k = [torch.zeros(shape) for _ in range(L)]
            self.v = [torch.zeros(shape) for _ in range(L)]
        self.len = 0

    def cache_bytes(self) -> int:
        """Bytes of the cached tokens (float32), as ours counts them."""
        cfg = self.cfg
        if cfg.is_mla:
            per_token = cfg.kv_lora_rank + cfg.qk_rope_head_dim
        else:
            per_token = 2 * cfg.n_kv_heads * cfg.head_dim
        return cfg.n_layers * per_token * self.len * self.batch * 4

    def fill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Prefill one prompt [1, P] through the reference forward's projections and copy its
        cache rows into every row of the batch; returns the next tokens [B]."""
        cfg, m = self.cfg, self.model
        P = prompt.shape[1]
        cos, sin = self.cos[:P], self.sin[:P]
        x = m.model.embed_tokens(prompt)
        for i, layer in enumerate(m.model.layers):
            a, y = layer.self_attn, layer.input_layernorm(x)
            if cfg.is_mla:
                c, k_pe = a.kv_a_proj_with_mqa(y).split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], -1)
                k_pe = ref.apply_rope(k_pe, cos, sin, cfg.rope_style)
                self.latents[i][:, :P] = torch.cat([a.kv_a_layernorm(c), k_pe], -1)
            else:
                k = a.k_proj(y).view(1, P, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
                v = a.v_proj(y).view(1, P, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
                self.k[i][:, :, :P] = ref.apply_rope(k, cos, sin, cfg.rope_style)
                self.v[i][:, :, :P] = v
            x = layer(x, cos, sin)
        self.len = P
        logits = m.model.norm(x[:, -1]) @ self.head.T
        return logits.argmax(-1).expand(self.batch).contiguous()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row [B] at position `len` -> the greedy next tokens [B]."""
        cfg, m, B, t = self.cfg, self.model, self.batch, self.len
        cos, sin = self.cos[t:t + 1], self.sin[t:t + 1]
        x = m.model.embed_tokens(tokens[:, None])  # [B, 1, d]
        for i, layer in enumerate(m.model.layers):
            a, y = layer.self_attn, layer.input_layernorm(x)
            if cfg.is_mla:
                o = self.mla(i, a, y, cos, sin)
            else:
                o = self.standard(i, a, y, cos, sin)
            x = x + a.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.len = t + 1
        return (m.model.norm(x[:, 0]) @ self.head.T).argmax(-1)

    def standard(self, i, a, y, cos, sin) -> torch.Tensor:
        cfg, B, t = self.cfg, self.batch, self.len
        h, kv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q = ref.apply_rope(a.q_proj(y).view(B, 1, h, hd).transpose(1, 2), cos, sin, cfg.rope_style)
        k = ref.apply_rope(a.k_proj(y).view(B, 1, kv, hd).transpose(1, 2), cos, sin, cfg.rope_style)
        self.k[i][:, :, t:t + 1] = k
        self.v[i][:, :, t:t + 1] = a.v_proj(y).view(B, 1, kv, hd).transpose(1, 2)
        keys, values = self.k[i][:, :, :t + 1], self.v[i][:, :, :t + 1]  # [B, kv, T, hd]
        # GQA/MQA: a K/V head's query heads as rows, no copy of K/V: [B, kv, group, hd]
        q = q.reshape(B, kv, h // kv, hd)
        probs = ((q @ keys.transpose(-1, -2)) * self.scale).softmax(-1)  # [B, kv, group, T]
        return (probs @ values).reshape(B, 1, h * hd)

    def mla(self, i, a, y, cos, sin) -> torch.Tensor:
        cfg, B, t = self.cfg, self.batch, self.len
        h, nope, rope, vd, r = (cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                                cfg.v_head_dim, cfg.kv_lora_rank)
        q = a.q_b_proj(a.q_a_layernorm(a.q_a_proj(y))) if cfg.q_lora_rank else a.q_proj(y)
        q = q.view(B, h, nope + rope)
        q_nope, q_pe = q[..., :nope], ref.apply_rope(q[..., nope:], cos, sin, cfg.rope_style)
        c, k_pe = a.kv_a_proj_with_mqa(y)[:, 0].split([r, rope], -1)
        k_pe = ref.apply_rope(k_pe[:, None], cos, sin, cfg.rope_style)[:, 0]
        self.latents[i][:, t] = torch.cat([a.kv_a_layernorm(c), k_pe], -1)
        lat = self.latents[i][:, :t + 1]  # [B, T, r + rope]
        w_uk, w_uv = self.absorbed[i]  # [h, nope, r], [h, v, r]
        # W_UK into the query: [B, h, nope] x [h, nope, r] -> [B, h, r]; with q_pe [B, h, r + rope]
        q_lat = torch.cat([torch.einsum("bhn,hnr->bhr", q_nope, w_uk), q_pe], -1)
        probs = ((q_lat @ lat.transpose(1, 2)) * self.scale).softmax(-1)  # [B, h, T]
        ctx = probs @ lat[..., :r]  # [B, h, r]
        return torch.einsum("bhr,hvr->bhv", ctx, w_uv).reshape(B, 1, h * vd)


@torch.no_grad()
def measure(arm: dict, report: dict, repeats: int) -> list[dict]:
    cfg = config_of(arm["model"])
    torch.manual_seed(0)
    model = ref.LM(cfg)
    ref.init_weights(model)
    model.eval()
    T, N = report["context"], report["new_tokens"]
    prompt = torch.randint(0, cfg.vocab_size, (1, T - N))
    points = []
    for p in arm["points"]:
        batch = p["batch"]
        dec = Decoder(model, batch, T)
        first = dec.fill(prompt)
        best = float("inf")
        for _ in range(repeats):
            dec.len = T - N
            nxt = first
            start = time.perf_counter()
            for _ in range(N):
                nxt = dec.step(nxt)
            best = min(best, time.perf_counter() - start)
        assert dec.len == T
        tps = batch * N / best
        points.append({"batch": batch, "tokens_per_s": tps, "decode_ms": best * 1e3,
                       "cache_bytes_held": dec.cache_bytes()})
        print(f"torch {arm['name']:<10} batch {batch:>5}: {tps:>9.1f} tok/s", file=sys.stderr)
        del dec
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="throughput.json of `mla bench throughput`")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=None, help="default: the report's")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.report) as f:
        report = json.load(f)
    repeats = args.repeat or report["repeats"]
    out = {"torch": torch.__version__, "threads": args.threads, "context": report["context"],
           "new_tokens": report["new_tokens"], "repeats": repeats, "arms": []}
    for arm in report["arms"]:
        out["arms"].append({"name": arm["name"], "points": measure(arm, report, repeats)})
    path = os.path.join(os.path.dirname(os.path.abspath(args.report)), "throughput_torch.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"ours vs PyTorch {torch.__version__} eager ({args.threads} threads), context "
          f"{report['context']}, {report['new_tokens']} new tokens, fastest of {repeats}")
    print(f"{'arm':<10} {'batch':>6} {'ours tok/s':>11} {'torch tok/s':>12} {'ours/torch':>11}")
    for ours, theirs in zip(report["arms"], out["arms"]):
        for p, q in zip(ours["points"], theirs["points"]):
            print(f"{ours['name']:<10} {p['batch']:>6} {p['tokens_per_s']:>11.0f} "
                  f"{q['tokens_per_s']:>12.0f} {p['tokens_per_s'] / q['tokens_per_s']:>11.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
