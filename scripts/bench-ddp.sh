#!/usr/bin/env bash
# Data-parallel scaling: the same run (same config, same global batch, same data) as one
# process and as N processes under torchrun, on libtorch (tch). Prints tokens/s of each, the
# speed-up and the scaling efficiency (speed-up / N), with the machine it ran on.
#
#   scripts/bench-ddp.sh [ROUNDS]                  CPU: 1 process x 2 threads vs 2 processes x 1 thread
#   scripts/bench-ddp.sh --gpus N [ROUNDS] [--mla PATH] [--config FILE]
#                                                  GPU: 1 process on cuda:0 vs N processes (NCCL)
#
# The CPU comparison is the one a 2-core machine allows: it is the same total of cores either
# way, so it measures what splitting the batch over processes costs or gains (per-process
# overhead, gloo's all-reduce, threading efficiency of one big process against two small
# ones), not scaling to more hardware. On GPUs it is the real thing: N times the devices.
#
# Needs: data/shakespeare-bpe shards (scripts/train-shakespeare.sh), .venv with torch and
# torchrun (scripts/setup-libtorch.sh), and target-tch/release/mla (built here if missing and
# no --mla is given). Each run trains 30 steps; tokens/s is measured from step 10 on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=3
gpus=0
mla=""
config=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpus) gpus="$2"; shift ;;
        --mla) mla="$2"; shift ;;
        --config) config="$2"; shift ;;
        [0-9]*) rounds="$1" ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
    shift
done
torchrun=.venv/bin/torchrun
[[ -x "$torchrun" ]] || torchrun="$(command -v torchrun || true)"
[[ -n "$torchrun" ]] || { echo "bench-ddp: no torchrun (scripts/setup-libtorch.sh installs one into .venv)" >&2; exit 2; }
if [[ -z "$mla" ]]; then
    # shellcheck disable=SC1091
    source .venv/libtorch.env
    unset LD_LIBRARY_PATH
    cargo build --release -p mla-model -p mla-train --features mla-train/tch --target-dir target-tch --quiet
    mla=target-tch/release/mla
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ $gpus -gt 0 ]]; then
    n=$gpus
    device=cuda
    threads=""
    machine="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $gpus"
else
    n=2
    device=tch-cpu
    # shellcheck source=scripts/lib/cpu.sh
    source scripts/lib/cpu.sh
    machine="$cpu_model, $(nproc) cores, $cpu_simd"
fi
if [[ -z "$config" ]]; then
    [[ -f data/shakespeare-bpe/train_000000.bin ]] || { echo "run scripts/train-shakespeare.sh first (data)" >&2; exit 2; }
    config="$work/bench.toml"
    # The small size of scripts/bench-train.sh, with a global batch of 16 (8 per rank on 2).
    cat >"$config" <<TOML
[model]
attention = "mla"
vocab_size = 4096
d_model = 256
n_layers = 4
n_heads = 4
kv_lora_rank = 128
qk_nope_head_dim = 64
qk_rope_head_dim = 32
v_head_dim = 64
d_ff = 704
max_seq_len = 128
[data]
train = "data/shakespeare-bpe/train_*.bin"
[train]
seq_len = 128
micro_batch = 8
global_batch = $((8 * n))
max_steps = 30
[log]
every = 5
tensorboard = false
[checkpoint]
keep_last = 1
TOML
fi

rate() {
    python3 - "$1/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
a, b = rows[1], rows[-1]
print((b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"]))
PY
}
one=()
many=()
for ((r = 1; r <= rounds; r++)); do
    rm -rf "$work/one" "$work/many"
    if [[ $gpus -gt 0 ]]; then
        "$mla" train "$config" --run-dir "$work/one" --set train.device=cuda >/dev/null 2>&1
    else
        OMP_NUM_THREADS=2 "$mla" train "$config" --run-dir "$work/one" --set train.device=tch-cpu >/dev/null 2>&1
    fi
    one+=("$(rate "$work/one")")
    OMP_NUM_THREADS=1 "$torchrun" --nproc-per-node "$n" --master-addr 127.0.0.1 --master-port $((29500 + r)) \
        --no-python "$mla" train "$config" --run-dir "$work/many" --set "train.device=$device" >/dev/null 2>&1
    many+=("$(rate "$work/many")")
    echo "bench-ddp: round $r/$rounds: 1 process ${one[-1]%.*} tok/s, $n processes ${many[-1]%.*} tok/s" >&2
done
python3 - "$n" "$machine" "$device" "${one[*]}" "${many[*]}" <<'PY'
import statistics, sys
n, machine, device = int(sys.argv[1]), sys.argv[2], sys.argv[3]
one = statistics.median(map(float, sys.argv[4].split()))
many = statistics.median(map(float, sys.argv[5].split()))
print(f"data-parallel training, {device}, {machine}; median of {len(sys.argv[4].split())} rounds")
print("| run | tokens/s | speed-up | scaling efficiency |")
print("|---|---:|---:|---:|")
label = "1 process x 2 threads" if device == "tch-cpu" else "1 GPU"
print(f"| {label} | {one:.0f} | 1.00 | |")
label = f"{n} processes x 1 thread (gloo)" if device == "tch-cpu" else f"{n} GPUs (NCCL)"
print(f"| {label} | {many:.0f} | {many / one:.2f} | {many / one / (1 if device == 'tch-cpu' else n):.2f} |")
PY
