"""Check an HF export of our model against logits our Rust model computed.

    .venv/bin/python scripts/reference/check_hf_export.py --export-dir DIR --expected FILE [--atol A]

DIR holds model.safetensors, config.json (and tokenizer.json), as `mla-train export` writes
them: DeepseekV2ForCausalLM for MLA, LlamaForCausalLM otherwise. FILE is a safetensors file with
`input_ids` (int64 [1, T]) and `logits` (float32 [1, T, V]) from the Rust model. The export is
loaded with plain transformers (no trust_remote_code), in float32, run on input_ids, and its
logits compared. Exit status: 0 when max |diff| <= atol, 1 when above (or when a weight is
missing or unused), 2 on a usage or load error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def fail(code: int, msg: str) -> None:
    print(f"check_hf_export: FAIL: {msg}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export-dir", required=True, help="directory with model.safetensors and config.json")
    ap.add_argument("--expected", required=True, help="safetensors file with input_ids and logits")
    ap.add_argument("--atol", type=float, default=1e-4, help="max abs logit difference (default %(default)s)")
    args = ap.parse_args()

    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()

    for name in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(args.export_dir, name)):
            fail(2, f"{args.export_dir} has no {name}")
    with open(os.path.join(args.export_dir, "config.json")) as f:
        arch = json.load(f).get("architectures", ["?"])[0]
    try:
        expected = load_file(args.expected)
        input_ids, want = expected["input_ids"], expected["logits"]
    except Exception as e:  # noqa: BLE001 (report any read error the same way)
        fail(2, f"cannot read input_ids/logits from {args.expected}: {e}")
    if input_ids.dtype != torch.int64 or input_ids.dim() != 2 or want.dim() != 3:
        fail(2, f"expected input_ids int64 [B, T] and logits [B, T, V], got {input_ids.dtype} "
                f"{list(input_ids.shape)} and {list(want.shape)}")

    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            args.export_dir, dtype=torch.float32, output_loading_info=True)
    except Exception as e:  # noqa: BLE001
        fail(2, f"transformers {transformers.__version__} cannot load {args.export_dir}: {e}")
    # from_pretrained initialises missing weights at random and only warns: make that an error.
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        fail(1, f"{args.export_dir} does not match {type(model).__name__}: {problems}")
    model.eval()

    tok_path = os.path.join(args.export_dir, "tokenizer.json")
    if os.path.isfile(tok_path):
        try:
            from tokenizers import Tokenizer

            n = Tokenizer.from_file(tok_path).get_vocab_size()
            if n > model.config.vocab_size:
                print(f"check_hf_export: warning: tokenizer.json has {n} tokens > vocab_size "
                      f"{model.config.vocab_size}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001
            print(f"check_hf_export: warning: tokenizer.json does not load: {e}", file=sys.stderr)

    with torch.no_grad():
        got = model(input_ids=input_ids).logits.float()
    if got.shape != want.shape:
        fail(1, f"logits shape {list(got.shape)} from transformers vs {list(want.shape)} expected")
    diff = (got - want).abs().max().item()
    where = f"{type(model).__name__} ({arch} in config.json), transformers {transformers.__version__}, " \
            f"torch {torch.__version__}, {list(input_ids.shape)} tokens"
    scale = want.abs().max().item()
    print(f"check_hf_export: max |logits diff| = {diff:.3e} (atol {args.atol:.1e}; max |logit| {scale:.3g}); "
          f"{where}")
    if not diff <= args.atol:  # also catches NaN
        fail(1, f"max |logits diff| {diff:.3e} > atol {args.atol:.1e}: the export does not reproduce "
                f"the model (RoPE row permutation? YaRN keys? norm eps? see scripts/reference/hf_config.md)")
    print("check_hf_export: OK")


if __name__ == "__main__":
    main()
