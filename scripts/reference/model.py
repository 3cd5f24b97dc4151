"""A small, exact PyTorch reference of our decoder-only LM (MLA and MHA/GQA/MQA).

Plain torch, no transformers. Parameter names and layouts are HuggingFace's (DeepseekV2 for MLA,
Llama otherwise; nn.Linear weights are [out, in], no biases), so a state dict of this model is a
HF checkpoint up to the RoPE row permutation of `permute_for_llama` / `permute_for_deepseek`.

    model.embed_tokens.weight                          [V, d]
    model.layers.N.input_layernorm.weight              [d]
    model.layers.N.self_attn.*                         see Attention / LatentAttention
    model.layers.N.post_attention_layernorm.weight     [d]
    model.layers.N.mlp.{gate,up}_proj.weight           [d_ff, d]
    model.layers.N.mlp.down_proj.weight                [d, d_ff]
    model.norm.weight                                  [d]
    lm_head.weight                                     [V, d]  (absent with tie_embeddings)

The config keys are those of our TOML `[model]` section (crates/mla-model/src/config.rs).
Everything is computed in float32 with an explicit causal softmax, for readability.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

MLA_KEYS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
STANDARD_KEYS = ("n_kv_heads", "head_dim")


@dataclass
class Config:
    """The `[model]` section, with config.rs's defaults filled in by `resolve()`."""

    attention: str  # "mha" | "gqa" | "mqa" | "mla"
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_seq_len: int
    # mha/gqa/mqa
    n_kv_heads: int | None = None
    head_dim: int | None = None
    # mla
    q_lora_rank: int | None = None  # 0 or None: plain q_proj
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    # shared
    rope_theta: float = 10000.0
    rope_style: str = "interleaved"  # "interleaved" (DeepSeek-V2) | "half" (Llama)
    rope_scaling: dict | None = None  # {type: "yarn", factor, original_max_position_embeddings, ...}
    tie_embeddings: bool = False
    rms_norm_eps: float = 1e-6
    extra: dict = field(default_factory=dict)  # keys we do not use (dtype, init_std, ...)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in fields(cls)} - {"extra"}
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        cfg.extra = {k: v for k, v in d.items() if k not in known}
        return cfg.resolve()

    def resolve(self) -> "Config":
        """Fill the defaults of config.rs's `ModelSection::resolve` and check the basics."""
        assert self.attention in ("mha", "gqa", "mqa", "mla"), self.attention
        d_h = self.d_model // self.n_heads
        if self.attention == "mla":
            assert self.n_kv_heads is None and self.head_dim is None, "mla takes no n_kv_heads/head_dim"
            self.q_lora_rank = self.q_lora_rank or 0
            self.qk_nope_head_dim = self.qk_nope_head_dim or d_h
            self.qk_rope_head_dim = self.qk_rope_head_dim or max(d_h // 2, 2)
            self.v_head_dim = self.v_head_dim or d_h
            self.kv_lora_rank = self.kv_lora_rank or 4 * d_h
        else:
            assert all(getattr(self, k) is None for k in MLA_KEYS), f"{self.attention} takes no MLA keys"
            self.head_dim = self.head_dim or d_h
            if self.n_kv_heads is None:
                self.n_kv_heads = {"mha": self.n_heads, "mqa": 1}[self.attention]
            assert self.n_heads % self.n_kv_heads == 0
        assert self.rope_dim % 2 == 0
        assert self.rope_style in ("interleaved", "half"), self.rope_style
        if self.rope_scaling is not None:
            y = {"type": "yarn", "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.0}
            y.update(self.rope_scaling)
            assert y["type"] == "yarn", y
            self.rope_scaling = y
        return self

    def to_dict(self) -> dict:
        """The TOML key names; keys of the other attention family and a None rope_scaling omitted."""
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        for k in STANDARD_KEYS if self.attention == "mla" else MLA_KEYS:
            d.pop(k)
        if d["rope_scaling"] is None:
            d.pop("rope_scaling")
        return d

    @property
    def is_mla(self) -> bool:
        return self.attention == "mla"

    @property
    def rope_dim(self) -> int:
        """Width of the rotated slice of each query/key head."""
        return self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    def softmax_scale(self) -> float:
        """1/sqrt(qk head dim), times YaRN's mscale(factor, mscale_all_dim)^2 (as config.rs)."""
        scale = self.qk_head_dim**-0.5
        y = self.rope_scaling
        if y is not None and y["mscale_all_dim"]:
            scale *= yarn_mscale(y["factor"], y["mscale_all_dim"]) ** 2
        return scale


# --------------------------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------------------------


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 0.1 * mscale * math.log(scale) + 1.0 if scale > 1 else 1.0


def rope_inv_freq(cfg: Config) -> tuple[torch.Tensor, float]:
    """inv_freq [r/2] (float64) and the factor on cos/sin (YaRN's attention factor, else 1).

    YaRN exactly as DeepSeek-V2's DeepseekV2YarnRotaryEmbedding / HF `_compute_yarn_parameters`
    (truncate=True): dims below `low` keep their frequency, dims above `high` are divided by
    `factor`, with a linear ramp in between.
    """
    r, theta = cfg.rope_dim, cfg.rope_theta
    inv_freq = theta ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)
    y = cfg.rope_scaling
    if y is None:
        return inv_freq, 1.0

    def correction_dim(n_rot: float) -> float:
        return r * math.log(y["original_max_position_embeddings"] / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(y["beta_fast"])), 0)
    high = min(math.ceil(correction_dim(y["beta_slow"])), r - 1)
    if low == high:
        high += 0.001  # avoid a division by zero
    ramp = ((torch.arange(r // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    inv_freq = inv_freq / y["factor"] * ramp + inv_freq * (1 - ramp)
    attention_factor = yarn_mscale(y["factor"], y["mscale"]) / yarn_mscale(y["factor"], y["mscale_all_dim"])
    return inv_freq, attention_factor


def rope_tables(cfg: Config, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, r/2] (float32) for positions 0..T-1, YaRN's attention factor folded in."""
    inv_freq, factor = rope_inv_freq(cfg)
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return (angles.cos() * factor).float(), (angles.sin() * factor).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """Rotate the last dim (r) of x [..., T, r] by position.

    interleaved: dims (2i, 2i+1) are pair i (HF DeepseekV2's `apply_rotary_emb`);
    half:        dims (i, i + r/2) are pair i (HF Llama's `rotate_half`).
    Pair i at position t is multiplied by e^{i t inv_freq[i]}.
    """
    if style == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


# DeepSeek-V2 (its reference code and HF's DeepseekV2) builds the latent norms with eps 1e-6
# whatever rms_norm_eps says; so do we (crates/mla-model/src/attention/mla.rs).
LATENT_NORM_EPS = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def linear(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=False)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q, k [B, H, T, dk], v [B, H, T, dv] -> [B, T, H * dv]."""
    B, H, T, _ = q.shape
    scores = (q @ k.transpose(-1, -2)) * scale  # [B, H, T, T]
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    probs = scores.masked_fill(mask, float("-inf")).softmax(dim=-1)
    return (probs @ v).transpose(1, 2).reshape(B, T, -1)


class Attention(nn.Module):
    """MHA / GQA / MQA: q_proj [h*hd, d], k_proj, v_proj [kv*hd, d], o_proj [d, h*hd]."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        h, kv, hd, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model
        self.q_proj = linear(d, h * hd)
        self.k_proj = linear(d, kv * hd)
        self.v_proj = linear(d, kv * hd)
        self.o_proj = linear(h * hd, d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin, cfg.rope_style), apply_rope(k, cos, sin, cfg.rope_style)
        # query head i reads key/value head i // (h / kv)
        group = cfg.n_heads // cfg.n_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return self.o_proj(causal_attention(q, k, v, cfg.softmax_scale()))


class LatentAttention(nn.Module):
    """DeepSeek-V2 multi-head latent attention.

    q_proj [h*(nope+rope), d]                        without q_lora_rank, else
    q_a_proj [q_lora, d], q_a_layernorm [q_lora], q_b_proj [h*(nope+rope), q_lora];
    kv_a_proj_with_mqa [kv_lora + rope, d] -> [c | k_pe], kv_a_layernorm [kv_lora],
    kv_b_proj [h*(nope+v), kv_lora] -> per head [k_nope | v], o_proj [d, h*v].
    k_pe is one head shared by all heads; RoPE touches only q_pe and k_pe.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        h, d = cfg.n_heads, cfg.d_model
        nope, rope, vd, c = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        if cfg.q_lora_rank:
            self.q_a_proj = linear(d, cfg.q_lora_rank)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = linear(cfg.q_lora_rank, h * (nope + rope))
        else:
            self.q_proj = linear(d, h * (nope + rope))
        self.kv_a_proj_with_mqa = linear(d, c + rope)
        self.kv_a_layernorm = RMSNorm(c, LATENT_NORM_EPS)
        self.kv_b_proj = linear(c, h * (nope + vd))
        self.o_proj = linear(h * vd, d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        h, nope, rope, vd = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        if cfg.q_lora_rank:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        else:
            q = self.q_proj(x)
        q = q.view(B, T, h, nope + rope).transpose(1, 2)  # [B, h, T, nope+rope]
        q_nope, q_pe = q.split([nope, rope], dim=-1)

        c, k_pe = self.kv_a_proj_with_mqa(x).split([cfg.kv_lora_rank, rope], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(c)).view(B, T, h, nope + vd).transpose(1, 2)
        k_nope, v = kv.split([nope, vd], dim=-1)  # [B, h, T, nope], [B, h, T, v]

        q_pe = apply_rope(q_pe, cos, sin, cfg.rope_style)
        k_pe = apply_rope(k_pe[:, None], cos, sin, cfg.rope_style)  # [B, 1, T, rope]: one shared head
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(B, h, T, rope)], dim=-1)
        return self.o_proj(causal_attention(q, k, v, cfg.softmax_scale()))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = linear(cfg.d_model, cfg.d_ff)
        self.up_proj = linear(cfg.d_model, cfg.d_ff)
        self.down_proj = linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm: h = x + attn(norm(x)); out = h + mlp(norm(h))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.self_attn = LatentAttention(cfg) if cfg.is_mla else Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)


class LM(nn.Module):
    """The language model. State dict keys are HF's (`model.…`, `lm_head.weight`)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.model = Decoder(cfg)
        self.lm_head = None if cfg.tie_embeddings else linear(cfg.d_model, cfg.vocab_size)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None):
        """input_ids [B, T] -> logits [B, T, V] and, given targets [B, T], the mean cross-entropy."""
        T = input_ids.shape[1]
        assert T <= self.cfg.max_seq_len, f"sequence of {T} > max_seq_len {self.cfg.max_seq_len}"
        cos, sin = rope_tables(self.cfg, T)
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        head = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = x @ head.T
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


@torch.no_grad()
def absorbed_decode_logits(model: LM, input_ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits [B, T - prefill, V] of positions prefill..T-1 of an MLA model, fed input_ids one
    token at a time through a latent cache with the up-projections absorbed.

    Per layer the cache holds only c_kv = kv_a_layernorm(c) [B, t, kv_lora] and the rotated
    k_pe [B, t, rope] of every token so far. W_UK (kv_b_proj's key rows) is folded into the
    query, W_UV (its value rows) into the output, as DeepSeek-V3's inference code does with
    attn_impl="absorb":

        scores = (q_nope W_UK) . c_kv + q_pe . k_pe,   ctx = softmax(scale * scores) c_kv,
        out    = o_proj(ctx W_UV^T)

    Written apart from LatentAttention.forward on purpose: it must agree with it (and with
    the Rust decode path) without sharing its code.
    """
    cfg = model.cfg
    assert cfg.is_mla, "absorption is an MLA inference path"
    B, T = input_ids.shape
    h, nope, rope, vd, r = (cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                            cfg.v_head_dim, cfg.kv_lora_rank)
    cos, sin = rope_tables(cfg, T)
    scale = cfg.softmax_scale()
    cache_c = [torch.zeros(B, 0, r) for _ in model.model.layers]
    cache_pe = [torch.zeros(B, 0, rope) for _ in model.model.layers]
    head = model.model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    out = []
    for t in range(T):
        x = model.model.embed_tokens(input_ids[:, t:t + 1])  # [B, 1, d]
        cos_t, sin_t = cos[t:t + 1], sin[t:t + 1]
        for i, layer in enumerate(model.model.layers):
            a = layer.self_attn
            y = layer.input_layernorm(x)
            q = a.q_b_proj(a.q_a_layernorm(a.q_a_proj(y))) if cfg.q_lora_rank else a.q_proj(y)
            q = q.view(B, h, nope + rope)
            q_nope, q_pe = q[..., :nope], apply_rope(q[..., nope:], cos_t, sin_t, cfg.rope_style)
            c, k_pe = a.kv_a_proj_with_mqa(y)[:, 0].split([r, rope], dim=-1)  # [B, r], [B, rope]
            k_pe = apply_rope(k_pe[:, None], cos_t, sin_t, cfg.rope_style)  # [B, 1, rope]
            cache_c[i] = torch.cat([cache_c[i], a.kv_a_layernorm(c)[:, None]], dim=1)
            cache_pe[i] = torch.cat([cache_pe[i], k_pe], dim=1)
            w = a.kv_b_proj.weight.view(h, nope + vd, r)  # HF layout [out, in], per head
            w_uk, w_uv = w[:, :nope], w[:, nope:]  # [h, nope, r], [h, v, r]
            q_latent = torch.einsum("bhn,hnr->bhr", q_nope, w_uk)
            scores = (torch.einsum("bhr,btr->bht", q_latent, cache_c[i])
                      + torch.einsum("bhp,btp->bht", q_pe, cache_pe[i])) * scale
            ctx = torch.einsum("bht,btr->bhr", scores.softmax(dim=-1), cache_c[i])
            o = torch.einsum("bhr,hvr->bhv", ctx, w_uv).reshape(B, 1, h * vd)
            x = x + a.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if t >= prefill:
            out.append(model.model.norm(x) @ head.T)
    return torch.cat(out, dim=1)


@torch.no_grad()
def init_weights(model: LM, std: float = 0.02) -> None:
    """Linear/embedding weights ~ N(0, std); norm weights 1 + 0.1 N(0, 1) so that they matter.

    Draws in `named_parameters()` order from torch's global generator (seed it first).
    """
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        else:
            p.normal_(0.0, std)


# --------------------------------------------------------------------------------------------
# RoPE row permutations (interleaved <-> rotate-half)
# --------------------------------------------------------------------------------------------
#
# A head vector x in the interleaved layout and y = x[P] with P = [0, 2, 4, ..., 1, 3, 5, ...]
# in the rotate-half layout rotate identically (interleaved pair (2i, 2i+1) becomes half pair
# (i, i + r/2), same frequency), and q.k is unchanged when q and k are permuted alike. So
# converting a checkpoint permutes, per head, the output rows that produce the rotated slice.


def half_from_interleaved(r: int) -> torch.Tensor:
    """P: new (half-layout) row j takes old (interleaved) row P[j]."""
    return torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2)])


def interleaved_from_half(r: int) -> torch.Tensor:
    """The inverse of `half_from_interleaved`: new (interleaved) row j takes old (half) row P[j]."""
    return torch.argsort(half_from_interleaved(r))


def _permute_rope_rows(w: torch.Tensor, n_heads: int, head_rows: int, rope_offset: int,
                       perm: torch.Tensor) -> torch.Tensor:
    """Within each of n_heads blocks of head_rows rows, permute the rope rows
    [rope_offset, rope_offset + len(perm)) by perm."""
    w = w.clone().view(n_heads, head_rows, -1)
    r = len(perm)
    w[:, rope_offset:rope_offset + r] = w[:, rope_offset:rope_offset + r][:, perm]
    return w.view(n_heads * head_rows, -1)


def convert_rope_style(sd: dict, cfg: Config, to_style: str) -> dict:
    """A state dict of a `cfg.rope_style` model rewritten for an equal `to_style` model."""
    if cfg.rope_style == to_style:
        return dict(sd)
    r = cfg.rope_dim
    perm = half_from_interleaved(r) if to_style == "half" else interleaved_from_half(r)
    out = dict(sd)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}.self_attn."
        if cfg.is_mla:
            qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
            q = p + ("q_b_proj.weight" if cfg.q_lora_rank else "q_proj.weight")
            out[q] = _permute_rope_rows(sd[q], cfg.n_heads, qk, cfg.qk_nope_head_dim, perm)
            kv = p + "kv_a_proj_with_mqa.weight"
            out[kv] = _permute_rope_rows(sd[kv], 1, cfg.kv_lora_rank + r, cfg.kv_lora_rank, perm)
        else:
            for name, heads in (("q_proj.weight", cfg.n_heads), ("k_proj.weight", cfg.n_kv_heads)):
                out[p + name] = _permute_rope_rows(sd[p + name], heads, cfg.head_dim, 0, perm)
    return out


def permute_for_llama(sd: dict, cfg: Config) -> dict:
    """Our interleaved mha/gqa/mqa weights -> Llama's rotate-half layout (no-op for `half`)."""
    assert not cfg.is_mla
    return convert_rope_style(sd, cfg, "half")


def unpermute_from_llama(sd: dict, cfg: Config) -> dict:
    """Llama (rotate-half) q/k weights -> our `cfg.rope_style` layout."""
    assert not cfg.is_mla
    half = Config.from_dict({**cfg.to_dict(), "rope_style": "half"})
    return convert_rope_style(sd, half, cfg.rope_style)


def permute_for_deepseek(sd: dict, cfg: Config) -> dict:
    """Our MLA weights -> DeepseekV2's interleaved layout (no-op for `interleaved`)."""
    assert cfg.is_mla
    return convert_rope_style(sd, cfg, "interleaved")


def unpermute_from_deepseek(sd: dict, cfg: Config) -> dict:
    """DeepseekV2 (interleaved) MLA weights -> our `cfg.rope_style` layout."""
    assert cfg.is_mla
    inter = Config.from_dict({**cfg.to_dict(), "rope_style": "interleaved"})
    return convert_rope_style(sd, inter, cfg.rope_style)


# --------------------------------------------------------------------------------------------
# HF export
# --------------------------------------------------------------------------------------------


def hf_rope_parameters(cfg: Config) -> dict:
    """transformers 5.x `rope_parameters`. YaRN carries the attention factor explicitly: HF infers
    mscale(f, mscale)/mscale(f, mscale_all_dim) only when both are non-zero, else mscale(f, 1)."""
    rp = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    y = cfg.rope_scaling
    if y is not None:
        rp.update(
            rope_type="yarn",
            factor=float(y["factor"]),
            original_max_position_embeddings=int(y["original_max_position_embeddings"]),
            beta_fast=float(y["beta_fast"]),
            beta_slow=float(y["beta_slow"]),
            mscale=float(y["mscale"]),
            mscale_all_dim=float(y["mscale_all_dim"]),
            attention_factor=float(rope_inv_freq(cfg)[1]),
        )
    return rp


def hf_config(cfg: Config) -> dict:
    """config.json for DeepseekV2ForCausalLM (mla) or LlamaForCausalLM (mha/gqa/mqa)."""
    rp = hf_rope_parameters(cfg)
    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "rope_parameters": rp,
        # transformers 4.x reads these two instead of rope_parameters (5.x accepts them too).
        "rope_theta": rp["rope_theta"],
        "rope_scaling": None if cfg.rope_scaling is None else
        {"type": "yarn", **{k: v for k, v in rp.items() if k != "rope_theta"}},
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": "float32",
        "torch_dtype": "float32",
    }
    if cfg.is_mla:
        return {
            "architectures": ["DeepseekV2ForCausalLM"],
            "model_type": "deepseek_v2",
            **common,
            "num_key_value_heads": cfg.n_heads,
            "q_lora_rank": cfg.q_lora_rank or None,
            "kv_lora_rank": cfg.kv_lora_rank,
            "qk_nope_head_dim": cfg.qk_nope_head_dim,
            "qk_rope_head_dim": cfg.qk_rope_head_dim,
            "v_head_dim": cfg.v_head_dim,
            # every layer dense: a plain SwiGLU `mlp`, no experts
            "first_k_dense_replace": cfg.n_layers,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **common,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
    }


def hf_state_dict(sd: dict, cfg: Config) -> dict:
    """Our state dict -> the HF checkpoint's: RoPE rows permuted to the target's convention,
    lm_head dropped when tied, and (Llama only) YaRN's softmax factor folded into q_proj."""
    if cfg.is_mla:
        out = permute_for_deepseek(sd, cfg)
    else:
        out = permute_for_llama(sd, cfg)
        # Llama's softmax scale is head_dim^-0.5 with no YaRN mscale^2; scores are linear in q.
        factor = cfg.softmax_scale() * cfg.head_dim**0.5
        if factor != 1.0:
            for i in range(cfg.n_layers):
                k = f"model.layers.{i}.self_attn.q_proj.weight"
                out[k] = out[k] * factor
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def export_hf(sd: dict, cfg: Config, out_dir: str) -> None:
    """Write out_dir/{model.safetensors, config.json, tokenizer.json} as transformers loads them."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    save_file(hf_state_dict(sd, cfg), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f, indent=2)
        f.write("\n")
    # A stand-in tokenizer: one word-level token per id ("t0", "t1", ...).
    vocab = {f"t{i}": i for i in range(cfg.vocab_size)}
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None,
        "decoder": None, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    }
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(tok, f)


def load_fixture(path: str) -> tuple[Config, dict, dict]:
    """(config, weights, other tensors) of a fixture written by make_fixtures.py."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = Config.from_dict(json.loads(meta["config"]))
    data_keys = ("input_ids", "targets", "logits", "loss")
    weights = {k: v for k, v in tensors.items() if k not in data_keys and not k.startswith("grad.")}
    rest = {k: v for k, v in tensors.items() if k not in weights}
    return cfg, weights, rest
