#!/usr/bin/env bash
# Attention in training, before and after the fused op: tokens/s and peak memory of training
# steps of the Shakespeare MLA model and its MHA twin at growing context, with a constant
# number of tokens per step (the batch shrinks as the context grows), side by side with the
# PyTorch reference (eager, torch.nn.functional.scaled_dot_product_attention) in the same run.
#
#   scripts/bench-attention.sh [--seqs 256,1024,2048,4096] [--tokens 8192] [--steps 6]
#   scripts/bench-attention.sh --probe [--batch 8] [--seqs 1024,2048,4096]
#
# Rows per (arm, context): PyTorch eager + SDPA; `mla` on flex with `[train] attention_kernel =
# "explicit"` (the path before: scores materialised) and "fused" (the tiled kernel); `mla` on
# libtorch (tch-cpu) with "fused" (torch's CPU flash kernels). tokens/s is measured from the
# first logged step to the last (`--steps` of them, logged every step, after one warm-up
# step); peak memory is the process's maximum resident set (`/usr/bin/time`), so it includes
# the weights, the optimizer state and the runtime (libtorch, or Python + torch).
#
# --probe trains one step at `--batch` sequences for each context with the flex kernels only
# and prints peak memory, to find the longest context that fits a machine: it never starts a
# run whose predicted peak (quadratic fit of the explicit path's points so far) exceeds
# MLA_PROBE_LIMIT_GB (default: 80% of MemTotal).
#
# Needs data/shakespeare-bpe (scripts/train-shakespeare.sh makes it), .venv with torch
# (scripts/setup-libtorch.sh --cpu), and builds target/release/mla and target-tch/release/mla.
# Prints the CPU model and SIMD level with the table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seqs=256,1024,2048,4096
tokens=8192
steps=6
probe=0
batch=8
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seqs) seqs="$2"; shift 2 ;;
        --tokens) tokens="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --probe) probe=1; shift ;;
        --batch) batch="$2"; shift 2 ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
py=.venv/bin/python
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

[[ -f data/shakespeare-bpe/train_000000.bin ]] || { echo "run scripts/train-shakespeare.sh first (data)" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "bench-attention: needs GNU time for peak memory (apt-get install time)" >&2; exit 2; }
cargo build --release --workspace --quiet
if [[ $probe == 0 ]]; then
    # shellcheck disable=SC1091
    source .venv/libtorch.env
    unset LD_LIBRARY_PATH
    cargo build --release -p mla-model -p mla-train --features mla-train/tch --target-dir target-tch --quiet
fi

# shellcheck source=scripts/lib/cpu.sh
source scripts/lib/cpu.sh

# The Shakespeare recipes' model sizes (configs/shakespeare-{mla,mha}.toml).
model_mla='attention = "mla"
kv_lora_rank = 128
qk_nope_head_dim = 64
qk_rope_head_dim = 32
v_head_dim = 64
d_ff = 704'
model_mha='attention = "mha"
head_dim = 64
d_ff = 704'

# config ARM SEQ BATCH STEPS -> path
config() {
    local arm="$1" seq="$2" b="$3" n="$4" var="model_$1"
    local path="$work/$arm-$seq-$b.toml"
    cat >"$path" <<TOML
[model]
vocab_size = 4096
d_model = 256
n_layers = 4
n_heads = 4
max_seq_len = $seq
${!var}
[data]
train = "data/shakespeare-bpe/train_*.bin"
[train]
seq_len = $seq
micro_batch = $b
max_steps = $n
[log]
every = 1
tensorboard = false
[checkpoint]
keep_last = 1
TOML
    echo "$path"
}

# Runs a command under /usr/bin/time; prints its peak RSS in GB, or "oom"/"failed".
peak_of() {
    local log="$work/time.log"
    if /usr/bin/time -f '%M' -o "$log" "$@" >"$work/out.log" 2>&1; then
        awk '{ printf "%.2f", $1 / 1048576 }' "$log"
    else
        tail -3 "$work/out.log" >&2
        echo failed
    fi
}

# mla BIN CONFIG DEVICE KERNEL -> "tokens/s peakGB"
mla_run() {
    local bin="$1" cfg="$2" device="$3" kernel="$4" run="$work/run"
    rm -rf "$run"
    local peak
    peak="$(peak_of "$bin" train "$cfg" --run-dir "$run" --set "train.device=$device" \
        --set "train.attention_kernel=$kernel")"
    if [[ "$peak" == failed ]]; then echo "- failed"; return; fi
    local tps
    tps="$(python3 - "$run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
a, b = rows[0], rows[-1]   # step 1 (the warm-up) to the last
dt = b["elapsed_s"] - a["elapsed_s"]
print(f'{(b["tokens"] - a["tokens"]) / dt:.0f}' if dt > 0 else "-")   # one step (--probe): no rate
PY
)"
    echo "$tps $peak"
}

pytorch_run() {
    local cfg="$1" out="$work/py.json"
    local peak
    peak="$(peak_of sh -c "$py scripts/reference/bench_train.py '$cfg' --steps $((steps - 1)) --warmup 1 > '$out'")"
    if [[ "$peak" == failed ]]; then echo "- failed"; return; fi
    echo "$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["tokens_per_s"]))' "$out") $peak"
}

IFS=, read -r -a seq_list <<<"$seqs"

if [[ $probe == 1 ]]; then
    mem_kb="$(sed -n 's/^MemTotal:\s*\([0-9]*\) kB/\1/p' /proc/meminfo)"
    limit="${MLA_PROBE_LIMIT_GB:-$(awk -v m="$mem_kb" 'BEGIN { printf "%.1f", 0.8 * m / 1048576 }')}"
    echo "peak memory of one training step at batch $batch (flex), by context; limit $limit GB"
    echo "CPU: $cpu_model ($cpu_simd, $(nproc) cores), $(awk -v m="$mem_kb" 'BEGIN { printf "%.1f", m / 1048576 }') GiB"
    echo "| arm | context | explicit peak GB | fused peak GB |"
    echo "|---|---:|---:|---:|"
    for arm in mla mha; do
        pts=""
        for seq in "${seq_list[@]}"; do
            cfg="$(config "$arm" "$seq" "$batch" 1)"
            predicted="$(python3 - "$seq" $pts <<'PY'
import sys
t = float(sys.argv[1]); pts = [tuple(map(float, p.split(":"))) for p in sys.argv[2:]]
if len(pts) < 3:
    print(0 if not pts else pts[-1][1] * (t / pts[-1][0]) ** 2)
else:  # exact quadratic through the last three points
    (x0, y0), (x1, y1), (x2, y2) = pts[-3:]
    l = lambda xi, xj, xk: (t - xj) * (t - xk) / ((xi - xj) * (xi - xk))
    print(y0 * l(x0, x1, x2) + y1 * l(x1, x0, x2) + y2 * l(x2, x0, x1))
PY
)"
            if awk -v p="$predicted" -v l="$limit" 'BEGIN { exit !(p > l) }'; then
                explicit="> $limit (predicted $(printf '%.1f' "$predicted"))"
            else
                explicit="$(mla_run target/release/mla "$cfg" cpu explicit | cut -d' ' -f2)"
                [[ "$explicit" == failed ]] || pts="$pts $seq:$explicit"
            fi
            fused="$(mla_run target/release/mla "$cfg" cpu fused | cut -d' ' -f2)"
            echo "| $arm | $seq | $explicit | $fused |"
        done
    done
    exit 0
fi

echo "training steps of $tokens tokens ($steps steps, tokens/s after the first), 2 threads each"
echo "CPU: $cpu_model ($cpu_simd, $(nproc) cores); torch $($py -c 'import torch; print(torch.__version__)')"
echo "| arm | context | batch | PyTorch SDPA tok/s | GB | flex explicit tok/s | GB | flex fused tok/s | GB | tch fused tok/s | GB | fused / PyTorch (flex, tch) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for seq in "${seq_list[@]}"; do
    b=$((tokens / seq))
    ((b >= 1)) || b=1
    for arm in mla mha; do
        cfg="$(config "$arm" "$seq" "$b" "$steps")"
        read -r pt pm <<<"$(pytorch_run "$cfg")"
        read -r et em <<<"$(mla_run target/release/mla "$cfg" cpu explicit)"
        read -r ft fm <<<"$(mla_run target/release/mla "$cfg" cpu fused)"
        read -r tt tm <<<"$(mla_run target-tch/release/mla "$cfg" tch-cpu fused)"
        ratio="$(python3 -c 'import sys
p, f, t = sys.argv[1:]
r = lambda x: f"{float(x) / float(p):.2f}" if x != "-" and p != "-" else "-"
print(f"{r(f)}, {r(t)}")' "$pt" "$ft" "$tt")"
        echo "| $arm | $seq | $b | $pt | $pm | $et | $em | $ft | $fm | $tt | $tm | $ratio |"
    done
done
