#!/usr/bin/env bash
# The main job: fetch Shakespeare's plays, train a byte-level BPE tokenizer on them, cut them
# into token shards, and train configs/shakespeare-<arm>.toml (default: mla) on 2 CPU cores.
#
#   scripts/train-shakespeare.sh            # MLA, ~9 minutes
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
