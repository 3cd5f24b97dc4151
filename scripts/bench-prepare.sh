#!/usr/bin/env bash
# Throughput of `mla data prepare` (MB of text per second) on the fetched Shakespeare +
# Gutenberg corpus (~16.7 MB), with a byte-level BPE trained here (vocab 8192) and with GPT-2's
# tokenizer. Builds the release binary, fetches data if needed, prints a Markdown table.
#
# Usage: scripts/bench-prepare.sh [RUNS]      (default 3 runs per row; best and median)
# Each tokenizer is timed on 1 thread and on all cores. Environment: CARGO_TARGET_DIR.
# MB/s is wall-clock and includes reading, scanning, tokenizing and writing the shards: run it
# on an otherwise idle machine. "MB per CPU-second" divides by user+system CPU time instead,
# which other load on the machine disturbs much less.
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
BYTES="$(cat data/shakespeare/*.txt data/gutenberg/*.txt | wc -c)"

start=$(date +%s%N)
"$MLA" tokenizer train --vocab-size 8192 --out "$TMP/bpe8k.json" "${CORPUS[@]}" >/dev/null
train_s=$(awk -v ns=$(($(date +%s%N) - start)) 'BEGIN { printf "%.1f", ns / 1e9 }')

# prints "wall_MB/s cpu_MB/s" for each run: wall from prepare's own summary, cpu = text MB
# per second of user+system CPU time (robust to other load on the machine)
runs() { # TOKENIZER THREADS
    local TIMEFORMAT='%U %S' mbs u s
    for _ in $(seq "$RUNS"); do
        { time RAYON_NUM_THREADS="$2" "$MLA" data prepare --tokenizer "$1" --out "$TMP/shards" \
            "${CORPUS[@]}" >"$TMP/out"; } 2>"$TMP/time"
        mbs="$(grep -o '[0-9.]* MB/s' "$TMP/out" | cut -d' ' -f1)"
        read -r u s < <(tail -1 "$TMP/time")
        awk -v w="$mbs" -v u="$u" -v s="$s" -v b="$BYTES" 'BEGIN { printf "%s %.2f\n", w, b / 1e6 / (u + s) }'
    done
}

stats() { # reads "wall cpu" lines, prints "best_wall median_wall median_cpu"
    cat >"$TMP/stats"
    local m=$((($(wc -l <"$TMP/stats") + 1) / 2))
    col() { cut -d' ' -f"$1" "$TMP/stats" | sort -g; }
    echo "$(col 1 | tail -1) $(col 1 | sed -n "${m}p") $(col 2 | sed -n "${m}p")"
}

bytes_per_token() { # TOKENIZER
    "$MLA" data prepare --tokenizer "$1" --out "$TMP/shards" "${CORPUS[@]}" |
        grep -o '[0-9.]* bytes/token' | cut -d' ' -f1
}

# shellcheck source=scripts/lib/cpu.sh
source "$ROOT/scripts/lib/cpu.sh"
cpu="$cpu_model ($cpu_simd)"
echo "machine: $(nproc) cores ($cpu), $RUNS runs per row"
echo "corpus: $BYTES bytes in $(ls data/shakespeare/*.txt data/gutenberg/*.txt | wc -l) files"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "byte-level BPE 8192 trained in ${train_s} s"
echo
echo "| tokenizer | vocab | bytes/token | threads | best MB/s | median MB/s | MB per CPU-second |"
echo "|---|---|---|---|---|---|---|"
for t in "BPE 8192 (trained here):$TMP/bpe8k.json:8192" "GPT-2:data/gpt2/tokenizer.json:50257"; do
    IFS=: read -r name path vocab <<<"$t"
    bpt="$(bytes_per_token "$path")"
    for threads in $(printf '%s\n' 1 "$(nproc)" | sort -un); do
        read -r best median cpu < <(runs "$path" "$threads" | stats)
        echo "| $name | $vocab | $bpt | $threads | $best | $median | $cpu |"
    done
done
