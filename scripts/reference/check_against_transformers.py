"""Check the PyTorch reference (model.py) against transformers' own DeepseekV2 and Llama.

    .venv/bin/python scripts/reference/check_against_transformers.py [--atol 1e-5]

For every fixture case of make_fixtures.py, plus variants that the fixtures do not cover
(rotate-half MHA, YaRN on Llama, transformers 4.x-style config keys), it:
  1. rebuilds the case and checks our logits against the committed fixture (if present);
  2. exports it with model.export_hf (config.json + model.safetensors, RoPE rows permuted to the
     target's convention) and loads it with AutoModelForCausalLM.from_pretrained, no remote code;
     no weight may be missing or unused;
  3. compares logits on the fixture batch and on a max_seq_len-long batch;
  4. checks that the permutation round-trips exactly, and that leaving it out does change the
     logits (so the test would catch a wrong convention);
  5. runs check_hf_export.py on the export: exit 0 on the right logits, 1 on perturbed ones.
Exits 1 if any check fails. Prints one line per case.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_fixtures  # noqa: E402
from model import (  # noqa: E402
    LM,
    Config,
    export_hf,
    load_fixture,
    permute_for_deepseek,
    permute_for_llama,
    unpermute_from_deepseek,
    unpermute_from_llama,
)

MHA = dict(make_fixtures.BASE, attention="mha", n_kv_heads=4, head_dim=8)
VARIANTS = {
    # Our `half` style is Llama's own: exported without permutation.
    "mha_half": dict(MHA, rope_style="half"),
    "gqa_half_tied": dict(MHA, attention="gqa", n_kv_heads=2, rope_style="half", tie_embeddings=True),
    "mla_no_q_lora_half": dict(make_fixtures.MLA, q_lora_rank=0, rope_style="half"),
    # Llama has no YaRN mscale^2 on the softmax: export folds it into q_proj.
    "mqa_yarn": dict(MHA, attention="mqa", n_kv_heads=1, rope_scaling=make_fixtures.YARN),
    # rope_theta != 10000, and an eps other than the default.
    "mla_theta": dict(make_fixtures.MLA, rope_theta=500.0),
    "mha_theta_eps": dict(MHA, rope_theta=500.0, rms_norm_eps=1e-5),
    # transformers' DeepseekV2 (like DeepSeek's own code) builds q_a_layernorm and kv_a_layernorm
    # with eps 1e-6 whatever rms_norm_eps says; so do we (LATENT_NORM_EPS): this must match.
    "mla_eps": dict(make_fixtures.MLA, rms_norm_eps=1e-5),
}
# Cases expected to differ from transformers, with the reason (none at present).
KNOWN_MISMATCH: dict[str, str] = {}
# Config.json variants for the YaRN MLA case: only the 5.x key, only the 4.x keys.
CONFIG_FORMS = ("both", "rope_parameters_only", "legacy_only")


def build(name: str, section: dict) -> tuple[Config, dict, dict]:
    tensors, meta = make_fixtures.make_case(name, section)
    cfg = Config.from_dict(json.loads(meta["config"]))
    data = ("input_ids", "targets", "logits", "loss")
    weights = {k: v for k, v in tensors.items() if k not in data and not k.startswith("grad.")}
    return cfg, weights, {k: tensors[k] for k in data}


def our_logits(cfg: Config, weights: dict, input_ids: torch.Tensor) -> torch.Tensor:
    model = LM(cfg)
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        return model(input_ids)[0]


def hf_logits(export_dir: str, input_ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not bad, f"loading {export_dir}: {bad}"
    with torch.no_grad():
        return model.eval()(input_ids=input_ids).logits


def rewrite_config(export_dir: str, form: str) -> None:
    path = os.path.join(export_dir, "config.json")
    with open(path) as f:
        c = json.load(f)
    if form == "rope_parameters_only":
        c.pop("rope_theta"), c.pop("rope_scaling")
    elif form == "legacy_only":
        rp = c.pop("rope_parameters")
        if c["rope_scaling"] is not None:  # 4.x style: "type", no rope_theta inside
            c["rope_scaling"] = {k: v for k, v in rp.items() if k not in ("rope_type", "rope_theta")}
            c["rope_scaling"]["type"] = "yarn"
    with open(path, "w") as f:
        json.dump(c, f, indent=2)


def run_export_check(export_dir: str, input_ids: torch.Tensor, logits: torch.Tensor, tmp: str) -> int:
    expected = os.path.join(tmp, "expected.safetensors")
    save_file({"input_ids": input_ids.contiguous(), "logits": logits.contiguous()}, expected)
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
    r = subprocess.run([sys.executable, os.path.join(HERE, "check_hf_export.py"), "--export-dir", export_dir,
                        "--expected", expected], capture_output=True, text=True, env=env)
    return r.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atol", type=float, default=1e-5, help="max abs logit diff vs transformers")
    ap.add_argument("--fixtures", default=make_fixtures.DEFAULT_OUT)
    args = ap.parse_args()

    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    failures = []
    worst = 0.0
    cases = [(n, s, True) for n, s in make_fixtures.CASES.items()] + [(n, s, False) for n, s in VARIANTS.items()]
    for name, section, is_fixture in cases:
        cfg, weights, data = build(name, section)
        ids_short = data["input_ids"]
        ids_long = torch.randint(0, cfg.vocab_size, (2, cfg.max_seq_len), generator=torch.Generator().manual_seed(7))
        notes = []

        # 1. the committed fixture is what this code computes
        fixture = os.path.join(args.fixtures, f"{name}.safetensors")
        if is_fixture and os.path.exists(fixture):
            fcfg, fweights, frest = load_fixture(fixture)
            same = fcfg.to_dict() == cfg.to_dict() and all(torch.equal(fweights[k], weights[k]) for k in weights)
            d = (our_logits(fcfg, fweights, frest["input_ids"]) - frest["logits"]).abs().max().item()
            if not (same and d == 0.0):
                failures.append(f"{name}: fixture differs from make_fixtures.py (weights same: {same}, logits {d:.2e})")
            notes.append("fixture ok")

        # 4. permutation round trip, exact
        if cfg.is_mla:
            back = unpermute_from_deepseek(permute_for_deepseek(weights, cfg), cfg)
        else:
            back = unpermute_from_llama(permute_for_llama(weights, cfg), cfg)
        if not all(torch.equal(back[k], weights[k]) for k in weights):
            failures.append(f"{name}: permute/unpermute does not round-trip")

        forms = CONFIG_FORMS if cfg.rope_scaling is not None else ("both",)
        with tempfile.TemporaryDirectory() as tmp:
            for form in forms:
                export = os.path.join(tmp, f"export_{form}")
                export_hf(weights, cfg, export)
                rewrite_config(export, form)
                diffs = []
                for ids in (ids_short, ids_long):
                    ours = our_logits(cfg, weights, ids)
                    theirs = hf_logits(export, ids)
                    diffs.append((ours - theirs).abs().max().item())
                d = max(diffs)
                if name in KNOWN_MISMATCH:
                    if d <= args.atol:
                        failures.append(f"{name}: expected a mismatch ({KNOWN_MISMATCH[name]}), got {d:.2e}")
                    notes.append(f"{form}: {d:.2e} (known: {KNOWN_MISMATCH[name]})")
                    continue
                worst = max(worst, d)
                if not d <= args.atol:
                    failures.append(f"{name} [{form}]: max |diff| {d:.2e} > {args.atol:.0e}")
                notes.append(f"{form}: {d:.2e}")

            # 4b. without the permutation (or the q fold) the export must be wrong
            natural = "interleaved" if cfg.is_mla else "half"
            needs_fix = cfg.rope_style != natural or (not cfg.is_mla and cfg.softmax_scale() != cfg.head_dim**-0.5)
            if needs_fix:
                raw = os.path.join(tmp, "raw")
                export_hf(weights, Config.from_dict({**cfg.to_dict(), "rope_style": natural}), raw)
                if cfg.rope_scaling is not None and not cfg.is_mla:  # undo the q fold as well
                    from safetensors.torch import load_file
                    sd = load_file(os.path.join(raw, "model.safetensors"))
                    for k in sd:
                        if k.endswith("q_proj.weight"):
                            sd[k] = weights[k].clone()
                    save_file(sd, os.path.join(raw, "model.safetensors"), metadata={"format": "pt"})
                d = (our_logits(cfg, weights, ids_long) - hf_logits(raw, ids_long)).abs().max().item()
                if d < 100 * args.atol:
                    failures.append(f"{name}: the export without permutation still matches ({d:.2e})")
                notes.append(f"unpermuted: {d:.1e}")

            # 5. check_hf_export.py: passes on our logits, fails on perturbed ones
            export = os.path.join(tmp, "export_both")
            if name in KNOWN_MISMATCH:
                print(f"{name:22s} " + ", ".join(notes))
                continue
            ids1 = ids_long[:1]
            ours1 = our_logits(cfg, weights, ids1)
            rc_ok = run_export_check(export, ids1, ours1, tmp)
            rc_bad = run_export_check(export, ids1, ours1 + 1e-3, tmp)
            if (rc_ok, rc_bad) != (0, 1):
                failures.append(f"{name}: check_hf_export.py exit codes {rc_ok}/{rc_bad}, want 0/1")
            notes.append(f"check_hf_export {rc_ok}/{rc_bad}")
        target = "DeepseekV2" if cfg.is_mla else "Llama"
        print(f"{name:22s} vs {target:10s} " + ", ".join(notes))

    print(f"worst max |logits diff| vs transformers: {worst:.3e} (atol {args.atol:.0e})")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
