#!/usr/bin/env bash
# The project's whole test suite, as CI runs it (.ci/run calls this):
#   1. fetch the test data (GPT-2 tokenizer and test vectors, corpora) if missing;
#   2. build and test the workspace on burn's flex CPU backend (release profile);
#   3. the Python checks: HF transformers loads our exports and matches our logits;
#   4. build with `--features tch` against a CPU-only libtorch and run the model and trainer
#      suites on the libtorch device, the c10d binding's tests, and data-parallel training
#      with 2 processes under torchrun (gloo).
# Stages can be chosen: scripts/test.sh flex python tch   (default: all)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(flex python tch)
has() { local s; for s in "${stages[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }
t0=$SECONDS
stamp() { printf '\n== %s (%ds elapsed)\n' "$*" $((SECONDS - t0)); }

stamp "fetch data"
scripts/fetch-data.sh

if has flex; then
    stamp "flex: build and test"
    cargo test --release --workspace
fi

if has python; then
    stamp "python: transformers loads our exports"
    scripts/setup-libtorch.sh --cpu --with-python-tests
    cargo build --release --workspace --quiet
    scripts/check-hf-export.sh
fi

if has tch; then
    stamp "tch: build with libtorch (CPU) and test on the libtorch device"
    scripts/setup-libtorch.sh --cpu
    # shellcheck disable=SC1091
    source .venv/libtorch.env
    # The binaries find libtorch through the rpath that build.rs bakes in, not the environment.
    unset LD_LIBRARY_PATH
    # mla-c10d (the c10d binding) and tests/dist.rs (2 ranks under torchrun, on gloo) build
    # only here.
    MLA_TEST_DEVICE=tch-cpu cargo test --release -p mla-model -p mla-train -p mla-c10d \
        --features mla-train/tch --target-dir target-tch
fi
stamp "all tests passed"
