#!/usr/bin/env bash
# One short check on a machine with an NVIDIA GPU that may have no Rust toolchain and no network,
# only a CUDA build of PyTorch: train the ~125M MLA config and its MHA twin for a few hundred
# steps in bf16 with a prebuilt `mla` (attention as one fused op: torch's SDPA kernels) and
# report what the trainer logs: tokens/s, MFU, the CUDA allocator's peak memory, and the loss at
# the first and last step.
#
#   scripts/gpu-check.sh --mla PATH/TO/mla [--peak-tflops 989] [--steps 300] [--device cuda:0]
#                        [--data 'data/gutenberg-gpt2/train_*.bin'] [--out gpu-check-out]
#
# --peak-tflops: the card's dense bf16 peak in TFLOP/s; the trainer knows the common NVIDIA
# data-centre cards by name (H100 989, H200 989, A100 312, L40S 362...), so it is needed only
# for others.
# The binary must be linked against THIS machine's libtorch (see README, "libtorch and GPUs"):
# the script puts the `torch` package of `python3` on LD_LIBRARY_PATH and checks the version.
# Data: token shards made with the GPT-2 tokenizer, prepared beforehand with `mla data prepare`
# (the default glob is what scripts/gpu-check.sh --prepare makes from data/gutenberg).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mla="" peak="" steps=300 device=cuda out=gpu-check-out prepare=0
data='data/gutenberg-gpt2/train_*.bin'
while [[ $# -gt 0 ]]; do
    case "$1" in
        --mla) mla="$2"; shift 2 ;;
        --peak-tflops) peak="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        --data) data="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --prepare) prepare=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n "$mla" ]] || mla=target-tch/release/mla
[[ -x "$mla" ]] || { echo "gpu-check: no mla binary at $mla (give --mla)" >&2; exit 2; }

if [[ $prepare == 1 ]]; then
    # Done where the data is (no GPU needed): GPT-2 tokens of the Gutenberg books.
    "$mla" data prepare --tokenizer data/gpt2/tokenizer.json --out data/gutenberg-gpt2 'data/gutenberg/*.txt'
    exit 0
fi
compgen -G "$data" >/dev/null || { echo "gpu-check: no shards match $data (run with --prepare where data/ is)" >&2; exit 2; }

torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
torch_version=$(python3 -c 'import torch; print(torch.__version__)')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "gpu-check: $gpu, torch $torch_version ($torch_lib), $mla"

mkdir -p "$out"
peak_set=()
[[ -z "$peak" ]] || peak_set=(--set "train.peak_tflops=$peak")
results=()
for arm in mla mha; do
    run="$out/$arm"
    rm -rf "$run"
    "$mla" train "configs/gpu-125m-$arm.toml" --run-dir "$run" \
        --set "train.device=$device" --set "train.max_steps=$steps" "${peak_set[@]}" \
        --set "data.train=$data" --set data.val= --set log.every=10 2>&1 | tail -5
    results+=("$(python3 - "$run/metrics.jsonl" "$arm" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
arm = sys.argv[2]
steady = rows[len(rows) // 5:]  # skip warm-up (allocator, autotune)
tps = statistics.median(r["tokens_per_s"] for r in steady)
mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
mfu = f"{100 * statistics.median(mfu):5.1f}%" if mfu else "  n/a (give --peak-tflops)"
peak = max(r.get("peak_memory_bytes", 0) for r in rows) / 2**30
print(f"{arm:<4} {tps:>10.0f} tok/s  MFU {mfu}  peak mem {peak:6.1f} GiB  "
      f"loss {rows[0]['loss']:.3f} (step {rows[0]['step']}) -> {rows[-1]['loss']:.3f} (step {rows[-1]['step']})")
PY
)")
done
echo
echo "gpu-check: $gpu, bf16, fused attention, seq 1024, 32 sequences/step, $steps steps"
printf '%s\n' "${results[@]}"
