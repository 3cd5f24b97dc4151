#!/usr/bin/env bash
# HuggingFace interop check (the Python stage of scripts/test.sh). For four small trained
# models covering MLA with and without query compression, both RoPE conventions, YaRN, GQA and
# tied embeddings:
#   1. `mla export --format hf`, then plain transformers (no custom code) loads the directory
#      and must reproduce our logits on a prompt (scripts/reference/check_hf_export.py);
#   2. transformers re-saves it (save_pretrained), `[checkpoint] init_from_hf` imports that,
#      and the first fine-tuning loss must equal the one from our own checkpoint.
# Needs .venv from `scripts/setup-libtorch.sh --cpu --with-python-tests`, data/shakespeare from
# scripts/fetch-data.sh, and a release build of `mla`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=.venv/bin/python
mla=target/release/mla
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$mla" tokenizer train --vocab-size 512 --out "$work/tok.json" 'data/shakespeare/*.txt' >/dev/null
"$mla" data prepare --tokenizer "$work/tok.json" --out "$work/shards" 'data/shakespeare/*.txt' >/dev/null

common() {
    cat <<TOML
[data]
train = "$work/shards/train_*.bin"
val = "$work/shards/val_*.bin"
tokenizer = "$work/tok.json"
[train]
seq_len = 32
micro_batch = 4
max_steps = 20
[optim]
lr = 3e-3
[schedule]
warmup_steps = 2
min_lr = 3e-4
[log]
every = 1
tensorboard = false
TOML
}
model_mla_qlora_yarn='attention = "mla"
d_model = 64
n_layers = 2
n_heads = 4
q_lora_rank = 24
kv_lora_rank = 32
qk_nope_head_dim = 16
qk_rope_head_dim = 8
v_head_dim = 12
d_ff = 128
max_seq_len = 64
rope_scaling = { type = "yarn", factor = 4.0, original_max_position_embeddings = 16, mscale = 0.707, mscale_all_dim = 0.707 }'
model_mla_plain_half='attention = "mla"
d_model = 64
n_layers = 2
n_heads = 4
kv_lora_rank = 32
qk_nope_head_dim = 16
qk_rope_head_dim = 8
v_head_dim = 16
d_ff = 128
max_seq_len = 64
rope_style = "half"'
model_gqa='attention = "gqa"
d_model = 64
n_layers = 2
n_heads = 4
n_kv_heads = 2
d_ff = 128
max_seq_len = 64'
model_mha_tied_yarn='attention = "mha"
d_model = 64
n_layers = 2
n_heads = 4
d_ff = 128
max_seq_len = 64
tie_embeddings = true
rope_style = "half"
rope_scaling = { type = "yarn", factor = 2.0, original_max_position_embeddings = 32, mscale_all_dim = 1.0 }'

prompt="To be, or not to be, that is the question."
for arm in mla_qlora_yarn mla_plain_half gqa mha_tied_yarn; do
    model="model_$arm"
    cfg="$work/$arm.toml"
    { printf '[model]\n%s\n' "${!model}"; common; } >"$cfg"
    "$mla" train "$cfg" --run-dir "$work/run-$arm" >/dev/null 2>&1 || {
        echo "check-hf-export: training $arm failed" >&2
        "$mla" train "$cfg" --run-dir "$work/run-$arm-retry"
        exit 1
    }
    "$mla" export "$work/run-$arm" --format hf --out "$work/hf-$arm"
    "$mla" logits "$work/run-$arm" --prompt "$prompt" --out "$work/expected-$arm.safetensors" >/dev/null
    "$py" scripts/reference/check_hf_export.py --export-dir "$work/hf-$arm" \
        --expected "$work/expected-$arm.safetensors" --atol 1e-4

    # transformers writes the directory itself; we import it and must see the same model.
    "$py" - "$work/hf-$arm" "$work/saved-$arm" <<'PY'
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
m.save_pretrained(sys.argv[2], safe_serialization=True)
PY
    for src in "init_from=\"$work/run-$arm\"" "init_from_hf=\"$work/saved-$arm\""; do
        name="${src%%=*}"
        "$mla" train "$cfg" --run-dir "$work/ft-$arm-$name" --set "checkpoint.$src" \
            --set train.max_steps=1 --set schedule.warmup_steps=0 >/dev/null 2>&1
    done
    own=$(head -1 "$work/ft-$arm-init_from/metrics.jsonl")
    hf=$(head -1 "$work/ft-$arm-init_from_hf/metrics.jsonl")
    "$py" - "$own" "$hf" "$arm" <<'PY'
import json, sys
own, hf, arm = json.loads(sys.argv[1])["loss"], json.loads(sys.argv[2])["loss"], sys.argv[3]
ok = abs(own - hf) <= 1e-6
print(f"check-hf-export: {arm}: first fine-tune loss from our checkpoint {own:.6f}, "
      f"from transformers' save_pretrained {hf:.6f}: {'OK' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
done
echo "check-hf-export: all exports load in transformers and import back"
