#!/usr/bin/env bash
# The main job: fetch Shakespeare's plays, train a byte-level BPE tokenizer on them, cut them
# into token shards, and train configs/shakespeare-<arm>.toml (default: mla) on 2 CPU cores.
#
#   scripts/train-shakespeare.sh            # MLA: 300 steps, about 4 min (AVX-512), 5-10 (AVX2)
#   scripts/train-shakespeare.sh mha        # its MHA twin: same data, schedule and seed
#   scripts/train-shakespeare.sh mla --set train.max_steps=50   # extra args go to `mla train`
#
# Each stage is skipped when its output exists. The run lands in runs/shakespeare-<arm>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

arm="${1:-mla}"
shift || true
config="configs/shakespeare-$arm.toml"
[[ -f "$config" ]] || { echo "no $config (arms: mla, mha)" >&2; exit 2; }

# The expected time, up front: measured on 2 cores of each CPU class (README, "The main job");
# the trainer then says its own estimate after its first steps.
# shellcheck source=scripts/lib/cpu.sh
source scripts/lib/cpu.sh
case "$arm:$cpu_simd" in
    mla:AVX-512 | mha:AVX-512) expect="about 4 minutes" ;;
    mla:AVX2 | mha:AVX2) expect="about 5-10 minutes" ;;
    *) expect="" ;;
esac
echo "train-shakespeare: $config on $(nproc) cores of $cpu_model ($cpu_simd)${expect:+: training takes $expect on 2 cores}"
[[ -x target/release/mla ]] || echo "train-shakespeare: first building mla (about 10 minutes on 2 cores)"

[[ -f data/shakespeare/SHA256SUMS ]] || scripts/fetch-data.sh
cargo build --release --workspace --quiet
mla=target/release/mla

out=data/shakespeare-bpe
if [[ ! -f "$out/tokenizer.json" ]]; then
    mkdir -p "$out"
    "$mla" tokenizer train --vocab-size 4096 --out "$out/tokenizer.json" 'data/shakespeare/*.txt'
fi
if ! compgen -G "$out/train_*.bin" >/dev/null; then
    "$mla" data prepare --tokenizer "$out/tokenizer.json" --out "$out" --val-fraction 0.1 'data/shakespeare/*.txt'
fi
exec "$mla" train "$config" "$@"
