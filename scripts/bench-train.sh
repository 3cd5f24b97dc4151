#!/usr/bin/env bash
# Training speed: the same MLA model trained by the PyTorch reference (eager, 2 threads, SDPA
# attention, torch.optim.AdamW; and the same under torch.compile) and by `mla` on burn's flex
# backend and on libtorch (tch-cpu), at two sizes, interleaved round by round so that load
# from elsewhere hits all alike. Prints the CPU and its SIMD level, tokens/s (median over
# rounds) and the ratio to PyTorch eager.
#
#   scripts/bench-train.sh [ROUNDS] [--avx2]     (default 2 rounds)
#
# --avx2 reproduces an AVX2-only CPU on an AVX-512 one: `mla` on flex is built without its
# AVX-512 kernels (`--no-default-features`, target-avx2/) and torch is told to use AVX2 only
# (ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2; for
# torch.compile, whose code dies with SIGBUS under ATEN_CPU_CAPABILITY=avx2 in torch 2.9.0,
# inductor's simdlen 256 instead). What it does not reproduce: burn-flex's elementwise kernels
# (macerator) still pick AVX-512 at run time, and the CPU's caches, clocks and memory are
# those of the AVX-512 part.
#
# Needs: data/shakespeare-bpe shards (scripts/train-shakespeare.sh makes them), .venv with torch
# (scripts/setup-libtorch.sh --cpu), target/release/mla and target-tch/release/mla (built here
# if missing). Each run trains 25 steps; tokens/s is measured from step 5 to step 25.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=2
avx2=0
for arg in "$@"; do
    case "$arg" in
        --avx2) avx2=1 ;;
        [0-9]*) rounds="$arg" ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
py=.venv/bin/python
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

[[ -f data/shakespeare-bpe/train_000000.bin ]] || { echo "run scripts/train-shakespeare.sh first (data)" >&2; exit 2; }
flex=target/release/mla
compile=("$py" scripts/reference/bench_train.py)
if [[ $avx2 == 1 ]]; then
    cargo build --release --workspace --no-default-features --target-dir target-avx2 --quiet
    flex=target-avx2/release/mla
    export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
    compile=(env -u ATEN_CPU_CAPABILITY "$py" scripts/reference/bench_train.py --simdlen 256)
else
    cargo build --release --workspace --quiet
fi
# shellcheck disable=SC1091
source .venv/libtorch.env
unset LD_LIBRARY_PATH
cargo build --release -p mla-model -p mla-train --features mla-train/tch --target-dir target-tch --quiet
# shellcheck source=scripts/lib/cpu.sh
source scripts/lib/cpu.sh
simd="$cpu_simd"
[[ $avx2 == 0 ]] || simd="$simd, run as AVX2 (--avx2)"

size_small='d_model = 256
n_layers = 4
n_heads = 4
kv_lora_rank = 128
qk_nope_head_dim = 64
qk_rope_head_dim = 32
v_head_dim = 64
d_ff = 704
max_seq_len = 128'
size_medium='d_model = 512
n_layers = 6
n_heads = 8
kv_lora_rank = 256
qk_nope_head_dim = 64
qk_rope_head_dim = 32
v_head_dim = 64
d_ff = 1408
max_seq_len = 256'
for size in small medium; do
    var="size_$size"
    seq=$([[ $size == small ]] && echo 128 || echo 256)
    cat >"$work/$size.toml" <<TOML
[model]
attention = "mla"
vocab_size = 4096
${!var}
[data]
train = "data/shakespeare-bpe/train_*.bin"
[train]
seq_len = $seq
micro_batch = 8
max_steps = 25
[log]
every = 5
tensorboard = false
[checkpoint]
keep_last = 1
TOML
done

# tokens/s of an `mla` run between its step-5 and last train lines.
ours() {
    local bin="$1" cfg="$2" device="$3" run="$work/run"
    rm -rf "$run"
    "$bin" train "$cfg" --run-dir "$run" --set "train.device=$device" >/dev/null 2>&1
    python3 - "$run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
a, b = rows[0], rows[-1]
print((b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"]))
PY
}

declare -A results
for ((r = 1; r <= rounds; r++)); do
    for size in small medium; do
        cfg="$work/$size.toml"
        results[$size,pytorch]+="$("$py" scripts/reference/bench_train.py "$cfg" --steps 20 --warmup 5 |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])') "
        # torch.compile: 10 warm-up steps (the first compiles the graph).
        results[$size,compile]+="$({ "${compile[@]}" "$cfg" --steps 20 --warmup 10 --compile 2>"$work/compile.log" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])'; } || echo nan) "
        results[$size,flex]+="$(ours "$flex" "$cfg" cpu) "
        results[$size,tch]+="$(ours target-tch/release/mla "$cfg" tch-cpu) "
        echo "bench-train: round $r/$rounds $size done" >&2
    done
done

python3 - "$rounds" "$(nproc)" "$work" "$cpu_model" "$simd" "$("$py" -c 'import torch; print(torch.__version__)')" <<PY
import json, statistics, subprocess, sys
res = {
$(for k in "${!results[@]}"; do echo "    \"$k\": [${results[$k]// /, }],"; done | sed 's/nan/float("nan")/g')
}
print(f"training tokens/s, MLA, 2 CPU threads, median of {sys.argv[1]} rounds ({sys.argv[2]} cores)")
print(f"CPU: {sys.argv[4]} ({sys.argv[5]}); torch {sys.argv[6]}")
print("| size | params | PyTorch eager | torch.compile | mla flex | ratio | mla tch | ratio |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
def params(size):
    out = subprocess.run(["target/release/mla", "inspect", f"{sys.argv[3]}/{size}.toml", "--json"],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    return f"{r['parameters']['total'] / 1e6:.1f}M (d {r['d_model']}, {r['layers']} layers, seq {r['flops_per_token']['seq_len']})"
for size in ("small", "medium"):
    med = {impl: statistics.median(res[f"{size},{impl}"]) for impl in ("pytorch", "compile", "flex", "tch")}
    p = med["pytorch"]
    compiled = "failed" if med["compile"] != med["compile"] else f"{med['compile']:.0f}"
    print(f"| {size} | {params(size)} | {p:.0f} | {compiled} | {med['flex']:.0f} | {med['flex'] / p:.2f} | {med['tch']:.0f} | {med['tch'] / p:.2f} |")
PY
