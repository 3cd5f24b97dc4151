#!/usr/bin/env bash
# Throughput of `mla data prepare` (MB of text per second) on the fetched Shakespeare +
# Gutenberg corpus (~16.7 MB), with a byte-level BPE trained here (vocab 8192) and with GPT-2's
# tokenizer. Builds the release binary, fetches data if needed, prints a Markdown table.
#
# Usage: scripts/bench-prepare.sh [RUNS]      (default 3 runs per tokenizer; best and median)
# Each tokenizer is timed on 1 thread and on all cores. Environment: CARGO_TARGET_DIR.
# Timings are wall-clock and include reading, scanning, tokenizing and writing the shards; run
# it on an otherwise idle machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-3}"
cd "$ROOT"

"$ROOT/scripts/fetch-data.sh"
cargo build --release --quiet --bin mla
MLA="${CARGO_TARGET_DIR:-$ROOT/target}/release/mla"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
CORPUS=(data/shakespeare data/gutenberg)

start=$(date +%s%N)
"$MLA" tokenizer train --vocab-size 8192 --out "$TMP/bpe8k.json" "${CORPUS[@]}" >/dev/null
train_s=$(awk -v ns=$(($(date +%s%N) - start)) 'BEGIN { printf "%.1f", ns / 1e9 }')

# prints the MB/s of each run, one per line
runs() { # TOKENIZER THREADS
    for _ in $(seq "$RUNS"); do
        RAYON_NUM_THREADS="$2" "$MLA" data prepare --tokenizer "$1" --out "$TMP/shards" "${CORPUS[@]}" |
            grep -o '[0-9.]* MB/s' | cut -d' ' -f1
    done
}

stats() { # reads numbers, prints "best median"
    sort -g | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
                                        printf "%.2f %.2f\n", v[NR], m }'
}

bytes_per_token() { # TOKENIZER
    "$MLA" data prepare --tokenizer "$1" --out "$TMP/shards" "${CORPUS[@]}" |
        grep -o '[0-9.]* bytes/token' | cut -d' ' -f1
}

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "machine: $(nproc) cores ($cpu), $RUNS runs per row"
echo "corpus: $(cat data/shakespeare/*.txt data/gutenberg/*.txt | wc -c) bytes in $(ls data/shakespeare/*.txt data/gutenberg/*.txt | wc -l) files"
echo "byte-level BPE 8192 trained in ${train_s} s"
echo
echo "| tokenizer | vocab | bytes/token | threads | best MB/s | median MB/s |"
echo "|---|---|---|---|---|---|"
for t in "BPE 8192 (trained here):$TMP/bpe8k.json:8192" "GPT-2:data/gpt2/tokenizer.json:50257"; do
    IFS=: read -r name path vocab <<<"$t"
    bpt="$(bytes_per_token "$path")"
    for threads in $(printf '%s\n' 1 "$(nproc)" | sort -un); do
        read -r best median < <(runs "$path" "$threads" | stats)
        echo "| $name | $vocab | $bpt | $threads | $best | $median |"
    done
done
