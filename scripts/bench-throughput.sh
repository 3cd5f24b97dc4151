#!/usr/bin/env bash
# Generation throughput at a fixed KV-cache budget (`mla bench throughput`), with the PyTorch
# reference doing the same batched decode side by side in the same run
# (scripts/reference/bench_throughput.py: eager, its own preallocated KV cache, latent +
# absorption for MLA).
#
#   scripts/bench-throughput.sh [CONFIG] [--kv-budget 256MiB] [--context 1024] [--new-tokens 16]
#                               [--attn mla,mha,gqa,mqa] [--repeat 3] [--threads N]
#                               [--out bench-out/throughput]
#
# --threads: threads of both (RAYON_NUM_THREADS for ours, torch.set_num_threads for the
# peer); default all cores. On a machine shared with other work, 1 thread each is the
# steadier comparison: torch's OpenMP threads wait for each other at every op, and a
# descheduled one stalls the step.
#
# Without CONFIG: the README's 30M-parameter models (the `mla bench decode` section's: preset
# gpt2-small-mla, vocabulary 8192, d_model 512, 8 layers, 8 heads, d_ff 1408). Builds
# target/release/mla if missing; PYTHON (default .venv/bin/python) needs torch. Prints the CPU
# model, its AVX-512 flags and the load average with the tables.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source=(--preset gpt2-small-mla --set model.vocab_size=8192 --set model.d_model=512
        --set model.n_heads=8 --set model.n_layers=8 --set model.d_ff=1408)
budget=256MiB
repeat=3
threads=$(nproc)
context=1024
new_tokens=16
attn=mla,mha,gqa,mqa
out=bench-out/throughput
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --kv-budget) budget="$2"; shift 2 ;;
        --context) context="$2"; shift 2 ;;
        --new-tokens) new_tokens="$2"; shift 2 ;;
        --attn) attn="$2"; shift 2 ;;
        --repeat) repeat="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --set) extra+=(--set "$2"); shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
        *) source=("$1" --vocab-size 8192); shift ;;
    esac
done
python="${PYTHON:-.venv/bin/python}"
[[ -x target/release/mla ]] || cargo build --release --workspace
# shellcheck source=scripts/lib/cpu.sh
source scripts/lib/cpu.sh
echo "CPU: $cpu_model ($cpu_simd: $(grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '))"
echo "cores: $(nproc) | threads: $threads | load average: $(cut -d' ' -f1-3 /proc/loadavg)"
RAYON_NUM_THREADS="$threads" target/release/mla bench throughput "${source[@]}" --kv-budget "$budget" --context "$context" \
    --new-tokens "$new_tokens" --attn "$attn" --repeat "$repeat" --out "$out" "${extra[@]}"
"$python" scripts/reference/bench_throughput.py "$out/throughput.json" --threads "$threads"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
