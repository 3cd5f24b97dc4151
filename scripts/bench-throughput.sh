#!/usr/bin/env bash
# Generation throughput at a fixed KV-cache budget (`mla bench throughput`), with the PyTorch
# reference doing the same batched decode side by side in the same run
# (scripts/reference/bench_throughput.py: eager, its own preallocated KV cache, latent +
# absorption for MLA).
#
#   scripts/bench-throughput.sh [CONFIG] [--kv-budget 48MiB] [--context 1024] [--new-tokens 16]
#                               [--attn mla,mha,gqa,mqa] [--out bench-out/throughput]
#
# CONFIG defaults to configs/shakespeare-mla.toml (with --vocab-size 8192 when its tokenizer is
# not at hand). Builds target/release/mla if missing; PYTHON (default .venv/bin/python) needs
# torch. Prints the CPU model and AVX-512 flags with the tables.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

config=configs/shakespeare-mla.toml
budget=48MiB
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
        --out) out="$2"; shift 2 ;;
        --set) extra+=(--set "$2"); shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
        *) config="$1"; shift ;;
    esac
done
python="${PYTHON:-.venv/bin/python}"
[[ -x target/release/mla ]] || cargo build --release --workspace
grep -m1 'model name' /proc/cpuinfo || true
echo "AVX-512: $(grep -o 'avx512[a-z]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "cores: $(nproc)"
target/release/mla bench throughput "$config" --vocab-size 8192 --kv-budget "$budget" \
    --context "$context" --new-tokens "$new_tokens" --attn "$attn" --out "$out" "${extra[@]}"
"$python" scripts/reference/bench_throughput.py "$out/throughput.json" --threads "$(nproc)"
