"""Write the parity fixtures of crates/mla-model/tests/fixtures/ from the PyTorch reference.

    .venv/bin/python scripts/reference/make_fixtures.py [--out DIR]

One safetensors file per case, with every weight under its HF name in HF layout (float32; ~ N(0, INIT_STD), norms
1 + 0.1 N(0, 1)),
`input_ids` / `targets` (int64 [B, T]), `logits` (float32 [B, T, V]), `loss` (float32 [1]) and
`grad.<name>` (float32) for a few weights, and for MLA cases `decode_logits` (float32
[B, T - DECODE_FROM, V]): positions DECODE_FROM.. fed one token at a time through the latent
cache with absorbed weights (model.absorbed_decode_logits); metadata "config" is the case's `[model]` section as
JSON (TOML key names), plus "generator" and "torch_version". Seeded: reruns give the same bytes
on the same torch version and CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import LM, Config, absorbed_decode_logits, init_weights  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(ROOT, "crates", "mla-model", "tests", "fixtures")
SEED = 1234
B, T = 2, 7
# The Rust test prefills the first DECODE_FROM tokens, then decodes the rest one by one.
DECODE_FROM = 3
# Weights ~ N(0, 0.2), not a training init's 0.02: at 0.02 attention is nearly uniform and the
# logits barely depend on it (a wrong YaRN factor or a missing mscale^2 moves them by < 1e-4,
# a wrong RoPE pairing by ~5e-4), so the fixtures could not catch those bugs at the tolerance.
# At 0.2 they move the logits by 0.3 to 3, while float32 rounding stays ~3e-6.
INIT_STD = 0.2

BASE = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=80, max_seq_len=16,
            rope_theta=10000.0, rope_style="interleaved", tie_embeddings=False, rms_norm_eps=1e-6)
MLA = dict(BASE, attention="mla", q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8,
           qk_rope_head_dim=4, v_head_dim=6)
YARN = dict(type="yarn", factor=4.0, original_max_position_embeddings=4, beta_fast=32.0,
            beta_slow=1.0, mscale=0.707, mscale_all_dim=0.707)

CASES = {
    "mha": dict(BASE, attention="mha", n_kv_heads=4, head_dim=8),
    "gqa": dict(BASE, attention="gqa", n_kv_heads=2, head_dim=8),
    "mqa": dict(BASE, attention="mqa", n_kv_heads=1, head_dim=8),
    "mla_q_lora": MLA,
    "mla_no_q_lora": dict(MLA, q_lora_rank=0),
    "mla_half": dict(MLA, rope_style="half"),
    "mla_yarn": dict(MLA, rope_scaling=YARN),
    # Beyond the lead's list: mscale != mscale_all_dim, so YaRN's factor on cos/sin is not 1
    # (1.0693; mla_yarn's 0.707/0.707 of DeepSeek-V2-Lite gives exactly 1). Smaller, to save space.
    "mla_yarn_attn_factor": dict(MLA, n_layers=1, d_ff=32,
                                 rope_scaling=dict(YARN, mscale=1.0, mscale_all_dim=0.5)),
    "mha_tied": dict(BASE, attention="mha", n_kv_heads=4, head_dim=8, tie_embeddings=True),
}


def grad_names(cfg: Config) -> list[str]:
    a = "model.layers.0.self_attn."
    if cfg.is_mla:
        q = "q_b_proj" if cfg.q_lora_rank else "q_proj"
        attn = [a + n for n in ("kv_b_proj", "kv_a_proj_with_mqa", q)]
    else:
        attn = [a + "q_proj", a + "k_proj"]
    return ["model.embed_tokens.weight", a + "o_proj.weight"] + [n + ".weight" for n in attn]


def make_case(name: str, section: dict) -> tuple[dict, dict]:
    """(tensors, metadata) of one fixture."""
    # One seed per case, so adding a case changes no other file.
    torch.manual_seed(SEED + sum(map(ord, name)))
    cfg = Config.from_dict(section)
    model = LM(cfg)
    init_weights(model, INIT_STD)
    input_ids = torch.randint(0, cfg.vocab_size, (B, T))
    targets = torch.randint(0, cfg.vocab_size, (B, T))
    logits, loss = model(input_ids, targets)
    loss.backward()
    params = dict(model.named_parameters())
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors.update(input_ids=input_ids, targets=targets, logits=logits.detach(),
                   loss=loss.detach().reshape(1))
    for g in grad_names(cfg):
        tensors["grad." + g] = params[g].grad.detach().clone()
    if cfg.is_mla:
        decode = absorbed_decode_logits(model, input_ids, DECODE_FROM)
        # The absorbed path is the same function as the full forward, computed another way.
        assert (decode - logits[:, DECODE_FROM:]).abs().max() < 1e-4, name
        tensors["decode_logits"] = decode
    metadata = {
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "generator": "scripts/reference/make_fixtures.py",
        "torch_version": torch.__version__,
    }
    return {k: v.contiguous() for k, v in tensors.items()}, metadata


def save_canonical(tensors: dict, path: str, metadata: dict) -> None:
    """safetensors' save_file, with the JSON header's keys sorted: the binding writes the
    metadata map in hash order, so identical fixtures would differ byte-wise between runs."""
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # keep the data 8-byte aligned, as safetensors does
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + raw[8 + n:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # same summation order on every machine with this torch
    os.makedirs(args.out, exist_ok=True)
    for name, section in CASES.items():
        tensors, metadata = make_case(name, section)
        path = os.path.join(args.out, f"{name}.safetensors")
        save_canonical(tensors, path, metadata)
        print(f"{path}: {os.path.getsize(path)} bytes, loss {tensors['loss'].item():.6f}")


if __name__ == "__main__":
    main()
