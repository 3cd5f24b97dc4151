#!/usr/bin/env bash
# Install libtorch 2.9.0 (the one tch 0.22 / burn-tch 0.22.1 expects) from the PyPI torch wheel
# into .venv/ at the workspace root, for building burn's `tch` backend (`--features tch`), and
# optionally the Python packages of the PyTorch reference in scripts/reference/.
#
# Usage: scripts/setup-libtorch.sh [--cpu] [--with-python-tests] [--torch VERSION] [--venv DIR]
#
#   (no flag)            full install: `pip install torch==2.9.0`, the CUDA build with its
#                        nvidia-* wheels (~6.7 GB). Needed to train on a GPU.
#   --cpu                slim CPU-only install (0.8 GB): torch without its dependencies, two
#                        small CUDA wheels that the CPU libraries link against, torch's
#                        pure-Python dependencies; the CUDA libraries of torch/lib are deleted
#                        (those Python's libtorch_python.so names are replaced by tiny stubs,
#                        see install_slim below).
#   --with-python-tests  also `pip install -r scripts/reference/requirements.txt` (transformers,
#                        safetensors, numpy; exact pins) into the same venv.
#   --torch VERSION      another torch than 2.9.0, to build for a machine that has that one
#                        (a GPU machine without a Rust toolchain: the binary must be linked
#                        against its libtorch). Full installs only. tch 0.22 is written for
#                        2.9; the env file then sets LIBTORCH_BYPASS_VERSION_CHECK=1. Checked:
#                        2.11.0 (+cu130) builds, and the tch test suite passes on its CPU device.
#   --venv DIR           the venv to install into (default .venv); keep one per torch version,
#                        and one target dir per venv (e.g. --venv .venv-2.11 with
#                        --target-dir target-gpu).
#
# It also installs gloo's headers (Debian's libgloo-dev, with apt-get) when they are missing:
# the c10d binding for data-parallel training (crates/mla-c10d) compiles against them.
#
# Idempotent: a torch==2.9.0 that imports is left alone. At the end it prints the environment
# to build with and writes the same lines to .venv/libtorch.env:
#
#     source .venv/libtorch.env && cargo build --release -p mla-model -p mla-train --features mla-train/tch --target-dir target-tch
#
# A machine with its own libtorch: set LIBTORCH (and LIBTORCH_LIB if its lib/ lives elsewhere)
# before running this; then nothing is installed, only .venv/libtorch.env is written.
#
# Measured on the 2-core dev box (PyPI over the network, empty pip cache): `--cpu
# --with-python-tests` from scratch takes 53 s and leaves a 1.1 GB .venv (torch 613 MB); a rerun
# that finds everything installed takes 6 s.
set -euo pipefail

TORCH_VERSION=2.9.0
# The CUDA runtime/CUPTI versions torch 2.9.0's METADATA pins (cu128 build).
CUDA_WHEEL_VERSION=12.8.90

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/scripts/reference/requirements.txt"

log() { echo "setup-libtorch: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

variant=full
python_tests=0
default_torch="$TORCH_VERSION"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu) variant=cpu ;;
        --with-python-tests) python_tests=1 ;;
        --torch)
            [[ $# -ge 2 ]] || die "--torch needs a version, e.g. --torch 2.11.0"
            TORCH_VERSION="$2"
            shift
            ;;
        --venv)
            [[ $# -ge 2 ]] || die "--venv needs a directory"
            VENV="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument '$1'"
            ;;
    esac
    shift
done
ENV_FILE="$VENV/libtorch.env"
if [[ "$TORCH_VERSION" != "$default_torch" && $variant == cpu ]]; then
    die "--cpu is the slim recipe for torch $default_torch (it pins that build's CUDA runtime" \
        "wheels); for torch $TORCH_VERSION use the full install (drop --cpu)"
fi
# tch 0.22 checks for libtorch 2.9 at build time; another version builds with the check off.
bypass_line=""
if [[ "$TORCH_VERSION" != "$default_torch" ]]; then
    bypass_line="export LIBTORCH_BYPASS_VERSION_CHECK=1"
fi

# Writes the environment lines to .venv/libtorch.env and prints them.
write_env() {
    mkdir -p "$VENV"
    printf '%s\n' "$@" >"$ENV_FILE"
    log "wrote $ENV_FILE; to build with libtorch:"
    echo
    cat "$ENV_FILE"
    echo
}

# torch-sys sets no rpath, so the built binaries and `cargo test` find libtorch*.so only
# through LD_LIBRARY_PATH.
ld_line() { echo "export LD_LIBRARY_PATH=\"$1\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""; }

# --- gloo's headers, for the c10d binding (crates/mla-c10d). ----------------------------------
# libtorch has gloo compiled in, but its c10d header ProcessGroupGloo.hpp includes gloo's own
# headers, which the wheel lacks: Debian's libgloo-dev has them (only the declarations are used;
# nothing links against Debian's libgloo). Installed when missing and apt-get can run.
ensure_gloo_headers() {
    [[ -e "${GLOO_INCLUDE:-/usr/include}/gloo/algorithm.h" ]] && return 0
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo -n"
    if command -v apt-get >/dev/null && $sudo true 2>/dev/null; then
        log "installing gloo's headers (Debian's libgloo-dev) for the c10d binding"
        $sudo apt-get install -y -q libgloo-dev >/dev/null ||
            { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q libgloo-dev >/dev/null; } ||
            die "apt-get install libgloo-dev failed"
    else
        log "warning: gloo's headers are missing and apt-get cannot run here: install libgloo-dev"
        log "         (or set GLOO_INCLUDE to a directory holding gloo/algorithm.h) before building"
        log "         with --features mla-train/tch"
    fi
}
ensure_gloo_headers

# --- A libtorch of the user's own: install nothing. -------------------------------------------
# (A LIBTORCH pointing into our own .venv is what a sourced slim libtorch.env sets: ignore it.)
if [[ -n "${LIBTORCH:-}" && "$LIBTORCH" != "$VENV"/* ]]; then
    lib="${LIBTORCH_LIB:-$LIBTORCH}"
    [[ -d "$lib/lib" ]] || die "LIBTORCH_LIB/LIBTORCH = $lib has no lib/ directory"
    [[ -e "$lib/lib/libtorch_cpu.so" ]] || log "warning: no libtorch_cpu.so in $lib/lib"
    log "LIBTORCH is set ($LIBTORCH): using it, installing nothing"
    if [[ $python_tests == 1 ]]; then
        log "warning: --with-python-tests ignored; the Python reference needs torch in a venv:"
        log "         unset LIBTORCH and rerun to get one"
    fi
    write_env \
        "# Written by scripts/setup-libtorch.sh: a libtorch given by the user." \
        "export LIBTORCH=\"$LIBTORCH\"" \
        "export LIBTORCH_LIB=\"$lib\"" \
        "unset LIBTORCH_USE_PYTORCH" \
        "$(ld_line "$lib/lib")"
    exit 0
fi

# --- The venv. -----------------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --no-input --disable-pip-version-check "$@"; }

# Directory of the torch package, without importing it.
torch_dir() {
    "$PY" -c 'import importlib.util, os; s = importlib.util.find_spec("torch"); print(os.path.dirname(s.origin) if s else "")'
}

# True when torch==TORCH_VERSION imports and multiplies two matrices.
torch_works() {
    TORCH_VERSION="$TORCH_VERSION" "$PY" - <<'EOF' >/dev/null 2>&1
import os, torch
assert torch.__version__.split("+")[0] == os.environ["TORCH_VERSION"], torch.__version__
(torch.randn(2, 2) @ torch.randn(2, 2)).sum().item()
EOF
}

# Which variant a torch/ directory holds: the slim one carries CUDA_STUBS.txt.
installed_variant() {
    if [[ -e "$1/lib/CUDA_STUBS.txt" ]]; then echo cpu; else echo full; fi
}

# The slim CPU install. The PyPI wheel is the CUDA build. Its CPU libraries (libtorch_cpu.so,
# libc10.so) link against only two small CUDA libraries, found through torch's rpath into
# site-packages/nvidia/*: libcudart.so.12 (nvidia-cuda-runtime-cu12, 3.5 MB) and libcupti.so.12
# (nvidia-cuda-cupti-cu12, 10 MB; the kineto profiler). Everything else CUDA sits in
# libtorch_cuda*.so, libc10_cuda.so, libtorch_nvshmem.so and libcaffe2_nvrtc.so (1.2 GB), which
# we delete, and with them the need for the other nvidia-* wheels (~5 GB). That is all tch needs.
#
# Python needs one more thing: libtorch_python.so (and libtorch.so) name libtorch_cuda.so,
# libc10_cuda.so, libcudnn.so.9, libcusparseLt.so.0 and libcufile.so.0 as DT_NEEDED and import
# ~150 symbols from them, and Python loads extensions with RTLD_NOW, so after the deletion
# `import torch` fails ("libtorch_cuda.so: cannot open shared object file"). The minimal fix
# (short of 2+ GB of cudnn/cusparselt/cublas wheels): before deleting, compile tiny stub
# libraries (~15 KB each) of those names into torch/lib that define exactly the symbols the kept
# libraries import, found with nm. Stub functions abort with a message naming the CUDA function;
# the availability queries return 0 (torch.cuda.is_available() is False, device_count() 0);
# typeinfo/vtables are dummies; data is zeroed. This needs binutils (nm, readelf, c++filt), ldd
# and a C compiler, which a Rust toolchain has anyway. (`pip install --no-deps torch` with the
# CUDA libraries kept fails too: libtorch_cuda.so needs libcublas.so.12.)
# triton (a Requires-Dist on Linux) is left out: it only compiles GPU kernels.
install_slim() {
    for tool in nm readelf c++filt ldd cc; do
        command -v "$tool" >/dev/null || die "--cpu needs '$tool' (apt-get install binutils gcc)"
    done
    log "installing torch==$TORCH_VERSION (slim CPU-only)"
    # shellcheck disable=SC2086 # $1 is an optional flag
    pip_install --no-deps $1 "torch==$TORCH_VERSION" \
        "nvidia-cuda-runtime-cu12==$CUDA_WHEEL_VERSION" \
        "nvidia-cuda-cupti-cu12==$CUDA_WHEEL_VERSION"
    # torch's pure-Python dependencies, read from its METADATA (Requires-Dist) with markers
    # evaluated for this interpreter: filelock, typing-extensions, sympy, networkx, jinja2,
    # fsspec (and setuptools on Python >= 3.12).
    local deps
    deps="$("$PY" - <<'EOF'
import importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement
for line in md.requires("torch") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name.startswith("nvidia-") or req.name == "triton":
        continue
    print(f"{req.name}{req.specifier}")
EOF
)"
    log "torch's Python dependencies: $(echo $deps)"
    log "(pip will list torch's nvidia-*/triton requirements as not installed: expected here)"
    # shellcheck disable=SC2086 # one requirement per word
    pip_install $deps
    local dir
    dir="$(torch_dir)"
    local cuda_libs=()
    for f in "$dir"/lib/libtorch_cuda*.so "$dir/lib/libc10_cuda.so" \
        "$dir/lib/libtorch_nvshmem.so" "$dir/lib/libcaffe2_nvrtc.so"; do
        if [[ -e "$f" ]]; then cuda_libs+=("$f"); fi
    done
    log "deleting the CUDA libraries of $dir/lib (${cuda_libs[*]##*/}), stubbing what Python needs"
    "$PY" - "$dir" "${cuda_libs[@]}" >&2 <<'EOF'
# argv: TORCH_DIR LIB...: analyse, delete LIB..., write stubs (see install_slim's comment).
import glob, os, re, subprocess, sys, tempfile

torch_dir, deleted = sys.argv[1], [os.path.realpath(p) for p in sys.argv[2:]]
lib_dir = os.path.join(torch_dir, "lib")
deleted_names = {os.path.basename(p) for p in deleted}


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", run("readelf", "-d", path))


def defined(path):
    """name -> (nm type, size) of the dynamic symbols a library defines."""
    out = {}
    for line in run("nm", "-D", "-S", "--defined-only", path).splitlines():
        f = line.split()
        if len(f) == 4:
            out[f[3].split("@")[0]] = (f[2], int(f[1], 16))
        elif len(f) == 3:
            out[f[2].split("@")[0]] = (f[1], 0)
    return out


kept = [p for p in glob.glob(os.path.join(lib_dir, "*.so*")) if os.path.realpath(p) not in deleted]
kept += glob.glob(os.path.join(torch_dir, "_C*.so"))

# Libraries the kept ones name directly that will be missing: the deleted ones, and those that
# only the full install's nvidia-* wheels provide.
resolved = {}  # soname -> path, over the kept libraries' dependency closure
for lib in kept:
    for line in run("ldd", lib).splitlines():
        m = re.match(r"\s*(\S+) => (not found|\S+)", line) or re.match(r"\s*((/\S+))", line)
        if m and m.group(2) != "not found" and os.path.basename(m.group(1)) not in deleted_names:
            resolved[os.path.basename(m.group(1))] = m.group(2)
missing = set()
for lib in kept:
    missing |= {n for n in needed(lib) if n in deleted_names or n not in resolved}
missing -= {os.path.basename(p) for p in kept}
if not missing:
    for path in deleted:
        os.remove(path)
    print("no stubs needed")
    sys.exit(0)

available = set()
for path in set(resolved.values()) | set(kept):
    available |= defined(path).keys()
in_deleted = {}
for path in deleted:
    for name, info in defined(path).items():
        in_deleted.setdefault(name, (os.path.basename(path),) + info)

# Strong undefined symbols of the kept libraries that nothing left defines (Py* come from the
# interpreter). Versioned ones go to the library of that version, the others where they were.
stubs = {name: {} for name in missing}  # soname -> {symbol: (nm type, size)}
versions = {name: set() for name in missing}
main = "libtorch_cuda.so" if "libtorch_cuda.so" in missing else sorted(missing)[0]
for lib in kept:
    for line in run("nm", "-D", "--undefined-only", lib).splitlines():
        kind, sym = line.split()[-2:]
        if kind != "U":
            continue
        name, _, version = sym.partition("@")
        if name in available or name.startswith(("Py", "_Py")):
            continue
        if version in missing:
            target = version
            versions[version].add(name)
        elif name in in_deleted and in_deleted[name][0] in missing:
            target = in_deleted[name][0]
        else:
            target = main
        stubs[target][name] = in_deleted.get(name, (None, "T", 0))[1:]

# Queries return 0 ("no device", "not available"); c10d's GIL-checker getter returns a
# reference to a slot that `import torch.distributed` writes.
ZERO = re.compile(r"^(c10::cuda::device_count\(|c10::cuda::hasPrimaryContext\(|sdp::)")
SLOT = re.compile(r"^c10d::get_gil_checker\(")


def stub_source(soname, syms):
    names = sorted(syms)
    pretty = dict(zip(names, run("c++filt", *names).splitlines())) if names else {}
    src = [
        "/* Stub for %s, generated by scripts/setup-libtorch.sh --cpu. */" % soname,
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "static void no_cuda(const char *what) {",
        '    fprintf(stderr, "torch: %%s needs CUDA, but this torch is the CPU-only install of '
        'scripts/setup-libtorch.sh --cpu (%s is a stub)\\n", what);' % soname,
        "    abort();",
        "}",
        'static void no_cuda_virtual(void) { no_cuda("a virtual call on a CUDA object"); }',
        "static void *slot;",
        "extern void *_ZTVN10__cxxabiv117__class_type_infoE[];",
    ]
    for name in names:
        kind, size = syms[name]
        what = pretty[name].replace("\\", "\\\\").replace('"', '\\"')
        if kind in "TtWwi":
            if ZERO.match(pretty[name]):
                src.append("long %s(void) { return 0; }" % name)
            elif SLOT.match(pretty[name]):
                src.append("void **%s(void) { return &slot; }" % name)
            else:
                src.append('void %s(void) { no_cuda("%s"); }' % (name, what))
        elif name.startswith("_ZTI"):  # typeinfo: {vtable of __class_type_info, name, 0}
            src.append('const void *%s[%d] = {&_ZTVN10__cxxabiv117__class_type_infoE[2], "%s"};'
                       % (name, max(size // 8, 2), name[4:]))
        elif name.startswith("_ZTV"):  # vtable: {offset 0, no typeinfo, slots that abort}
            n = max(size // 8, 3)
            src.append("void *%s[%d] = {0, 0, %s};"
                       % (name, n, ", ".join(["(void *)no_cuda_virtual"] * (n - 2))))
        else:
            src.append("__attribute__((aligned(16))) char %s[%d];" % (name, max(size, 8)))
    return "\n".join(src) + "\n"


# The analysis is done: delete the real libraries, then build the stubs in their place.
for path in deleted:
    os.remove(path)
with tempfile.TemporaryDirectory() as tmp:
    for soname, syms in sorted(stubs.items()):
        c_path = os.path.join(tmp, soname + ".c")
        with open(c_path, "w") as f:
            f.write(stub_source(soname, syms))
        cmd = ["cc", "-shared", "-fPIC", "-O1", "-Wl,-soname," + soname,
               "-o", os.path.join(lib_dir, soname), c_path]
        if versions[soname]:
            map_path = os.path.join(tmp, soname + ".map")
            with open(map_path, "w") as f:
                f.write("%s { global: %s; local: *; };\n"
                        % (soname, "; ".join(sorted(versions[soname]))))
            cmd.append("-Wl,--version-script=" + map_path)
        subprocess.run(cmd, check=True)
        print("  stub %-20s %4d symbols" % (soname, len(syms)))
with open(os.path.join(lib_dir, "CUDA_STUBS.txt"), "w") as f:
    f.write(
        "This torch is the slim CPU-only install of scripts/setup-libtorch.sh --cpu.\n"
        "Deleted: %s.\n"
        "Stubs (a few KB each, only so that libtorch_python.so loads; calling into them\n"
        "aborts with a message): %s.\n"
        "For CUDA: rm -rf .venv and run scripts/setup-libtorch.sh without --cpu.\n"
        % (", ".join(sorted(deleted_names)), ", ".join(sorted(stubs))))
EOF
}

install_full() {
    log "installing torch==$TORCH_VERSION (full CUDA build with its nvidia-* wheels: 4.5-7 GB)"
    # shellcheck disable=SC2086 # $1 is an optional flag
    pip_install $1 "torch==$TORCH_VERSION"
    install_cuda_host_headers
}

# The c10d binding's NCCL backend compiles against CUDA's host headers; torch's CUDA runtime
# wheel lacks crt/host_defines.h and libcu++'s nv/target, which NVIDIA ships in its crt (nvcc)
# and cccl wheels. Installed to match the CUDA version torch pins (torch 2.11: cuda-toolkit
# 13.0.2; torch 2.9: CUDA 12.8).
install_cuda_host_headers() {
    local meta pin
    meta="$("$PY" -c 'import importlib.metadata as m; print("\n".join(m.requires("torch") or []))')"
    if pin=$(grep -o '^cuda-toolkit\[[^]]*\]==[0-9.]*' <<<"$meta" | sed 's/\[.*\]//' | head -1) && [[ -n "$pin" ]]; then
        pip_install -q "cuda-toolkit[crt,cccl]==${pin#*==}"
    elif pin=$(grep -o '^nvidia-cuda-runtime-cu12==[0-9]*\.[0-9]*' <<<"$meta" | head -1) && [[ -n "$pin" ]]; then
        pip_install -q "nvidia-cuda-nvcc-cu12~=${pin#*==}.0" "nvidia-cuda-cccl-cu12~=${pin#*==}.0"
    else
        log "warning: cannot tell torch's CUDA version; the NCCL backend needs CUDA's host headers"
        log "         (a CUDA toolkit: set CUDA_HOME) to build"
    fi
}

# --- torch. --------------------------------------------------------------------------------------
dir="$(torch_dir)"
if [[ -n "$dir" ]] && torch_works; then
    have="$(installed_variant "$dir")"
    if [[ "$have" != "$variant" ]]; then
        die "$VENV holds the $have torch install, not the $variant one asked for;" \
            "remove it (rm -rf $VENV) and rerun"
    fi
    log "torch==$TORCH_VERSION ($variant) already installed and importable in $VENV: skipping"
else
    # A torch that is present but broken (say an interrupted install) is reinstalled.
    force=""
    if [[ -n "$dir" ]]; then force="--force-reinstall"; fi
    if [[ $variant == cpu ]]; then install_slim "$force"; else install_full "$force"; fi
fi

# --- Checks. -------------------------------------------------------------------------------------
dir="$(torch_dir)"
"$PY" -W ignore::UserWarning -c "import torch; print(torch.__version__, torch.randn(2,2) @ torch.randn(2,2))" \
    || die "import torch fails in $VENV (see above); remove $VENV and rerun"
for lib in libtorch.so libtorch_cpu.so libc10.so; do
    [[ -e "$dir/lib/$lib" ]] || die "$dir/lib/$lib is missing"
done
log "torch OK: $dir/lib has libtorch.so, libtorch_cpu.so, libc10.so"

# --- The Python reference's packages. --------------------------------------------------------
if [[ $python_tests == 1 ]]; then
    if "$PY" - "$REQUIREMENTS" <<'EOF' >/dev/null 2>&1; then
import sys, importlib.metadata as md
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        assert md.version(name) == version, line
from transformers import DeepseekV2ForCausalLM, LlamaForCausalLM
EOF
        log "python test packages already installed: skipping"
    else
        log "installing $REQUIREMENTS"
        pip_install -r "$REQUIREMENTS"
    fi
    "$PY" -c "import transformers, safetensors, numpy; from transformers import DeepseekV2ForCausalLM, LlamaForCausalLM; print('transformers', transformers.__version__, 'safetensors', safetensors.__version__, 'numpy', numpy.__version__)" \
        || die "the python test packages do not import"
fi

# --- The environment to build with. -------------------------------------------------------
if [[ $variant == cpu ]]; then
    # Rust links a view of torch/ without the CUDA stubs: burn-tch takes a libtorch_cuda.so for
    # real CUDA and calls into it at program start, which a stub cannot serve. The view is
    # include/ and a symlink to every real library of torch/lib, placed next to torch/ so that
    # the libraries' RPATH ($ORIGIN/../../nvidia/...) still finds the CUDA runtime wheels.
    rust="$(dirname "$dir")/libtorch-rust"
    rm -rf "$rust"
    mkdir -p "$rust/lib"
    ln -s "$dir/include" "$rust/include"
    stubbed=$(sed -n 's/^Stubs.*: \(.*\)\.$/\1/p; s/^aborts with a message): \(.*\)\.$/\1/p' "$dir/lib/CUDA_STUBS.txt" 2>/dev/null | tr -d ',' || true)
    for f in "$dir"/lib/*; do
        name="${f##*/}"
        case " $stubbed " in *" $name "*) continue ;; esac
        ln -s "$f" "$rust/lib/$name"
    done
    [[ ! -e "$rust/lib/libtorch_cuda.so" ]] || die "the Rust libtorch view still has libtorch_cuda.so"
    # LIBTORCH pins exactly this directory (LIBTORCH_USE_PYTORCH would ask python instead). The
    # PyPI wheels use the C++11 ABI, torch-sys's default for LIBTORCH_CXX11_ABI.
    write_env \
        "# Written by scripts/setup-libtorch.sh --cpu: slim CPU-only libtorch $TORCH_VERSION from PyPI." \
        "export LIBTORCH=\"$rust\"" \
        "export LIBTORCH_LIB=\"$rust\"" \
        "unset LIBTORCH_USE_PYTORCH" \
        "$(ld_line "$rust/lib")"
else
    write_env \
        "# Written by scripts/setup-libtorch.sh: full (CUDA) libtorch $TORCH_VERSION from PyPI." \
        "export LIBTORCH_USE_PYTORCH=1" \
        "unset LIBTORCH LIBTORCH_LIB" \
        ${bypass_line:+"$bypass_line"} \
        "export VIRTUAL_ENV=\"$VENV\"" \
        "export PATH=\"$VENV/bin:\$PATH\"" \
        "$(ld_line "$dir/lib")"
fi
