// Compiles shim/c10d.cpp against the libtorch that torch-sys links (its `libtorch_lib`
// metadata, DEP_TCH_LIBTORCH_LIB), with the same flags torch-sys compiles its own wrapper with
// (C++17, the C++11 ABI flag), so that the at::Tensor behind a tch tensor is the one the shim
// sees. gloo is compiled into libtorch_cpu, but its headers are not in the wheel: they come
// from Debian's libgloo-dev (or GLOO_INCLUDE). The NCCL backend and the CUDA allocator's
// statistics are compiled in only when this libtorch has CUDA (libtorch_cuda) and NCCL's and
// the CUDA runtime's headers are found (the nvidia-* wheels of a full torch install).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=shim/c10d.cpp");
    println!("cargo:rerun-if-changed=shim/c10d.h");
    for var in ["GLOO_INCLUDE", "LIBTORCH_CXX11_ABI", "CUDA_HOME"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys reports the libtorch it links (DEP_TCH_LIBTORCH_LIB)"),
    );
    // `<torch>/lib` -> `<torch>`
    let root = lib.parent().unwrap_or(&lib).to_path_buf();
    let gloo = std::env::var_os("GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    if !gloo.join("gloo/algorithm.h").exists() {
        panic!(
            "gloo's headers (gloo/algorithm.h) are not in {}: install Debian's libgloo-dev \
             (`apt-get install libgloo-dev`; scripts/setup-libtorch.sh does it) or set GLOO_INCLUDE",
            gloo.display()
        );
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .file("shim/c10d.cpp");

    let cuda = cuda_includes(&lib);
    if let Some(dirs) = &cuda {
        build
            .define("MLA_C10D_CUDA", None)
            .define("USE_C10D_NCCL", None);
        for d in dirs {
            build.include(d);
        }
    }
    build.compile("mla_c10d");

    println!("cargo:rustc-link-search=native={}", lib.display());
    // This crate's own tests find libtorch without LD_LIBRARY_PATH (mla-model's build script
    // does the same for the binaries of the crates above).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if cuda.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        println!("cargo:rustc-cfg=mla_c10d_cuda");
    }
    println!("cargo:rustc-check-cfg=cfg(mla_c10d_cuda)");
}

/// The include directories of the CUDA runtime and NCCL when `lib` holds libtorch_cuda: the
/// nvidia-* wheels beside torch (site-packages/nvidia/*/include) and CUDA_HOME/include.
fn cuda_includes(lib: &Path) -> Option<Vec<PathBuf>> {
    if !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let mut dirs = Vec::new();
    // <site-packages>/torch/lib (or the libtorch-rust view beside torch) -> <site-packages>
    if let Some(site) = lib.parent().and_then(Path::parent) {
        let nvidia = site.join("nvidia");
        for entry in std::fs::read_dir(&nvidia).into_iter().flatten().flatten() {
            let inc = entry.path().join("include");
            if inc.is_dir() {
                // CUDA 12's cccl wheel puts libcu++ one level down.
                if inc.join("cccl").is_dir() {
                    dirs.push(inc.join("cccl"));
                }
                dirs.push(inc);
            }
        }
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        dirs.push(PathBuf::from(home).join("include"));
    }
    let has = |h: &str| dirs.iter().any(|d| d.join(h).exists());
    // crt/host_defines.h and nv/target: CUDA's host headers and libcu++, in a toolkit or
    // NVIDIA's crt and cccl wheels (the runtime wheel alone lacks them;
    // scripts/setup-libtorch.sh installs them).
    let missing: Vec<&str> = [
        "nccl.h",
        "cuda_runtime_api.h",
        "crt/host_defines.h",
        "nv/target",
    ]
    .into_iter()
    .filter(|h| !has(h))
    .collect();
    if missing.is_empty() {
        Some(dirs)
    } else {
        println!(
            "cargo:warning=libtorch has CUDA but {} not found (looked in \
             site-packages/nvidia/*/include and CUDA_HOME/include): building without NCCL; \
             scripts/setup-libtorch.sh (full install) provides them",
            missing.join(", ")
        );
        None
    }
}
