// With the `tch` feature, bake libtorch's library directory into every binary and test as an
// rpath: torch-sys links libtorch but sets none, so they would otherwise need LD_LIBRARY_PATH.
// The directory is found as torch-sys finds libtorch: `LIBTORCH_LIB` or `LIBTORCH`, or (with
// `LIBTORCH_USE_PYTORCH=1`) the `torch` package of the active Python.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    for var in [
        "LIBTORCH",
        "LIBTORCH_LIB",
        "LIBTORCH_USE_PYTORCH",
        "VIRTUAL_ENV",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    let root = std::env::var_os("LIBTORCH_LIB")
        .or_else(|| std::env::var_os("LIBTORCH"))
        .map(PathBuf::from)
        .or_else(|| {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import os, torch; print(os.path.dirname(torch.__file__))",
                ])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        });
    match root {
        Some(root) => println!(
            "cargo:rustc-link-arg=-Wl,-rpath,{}",
            root.join("lib").display()
        ),
        None => println!(
            "cargo:warning=tch feature: libtorch not found (set LIBTORCH, or source \
             .venv/libtorch.env after scripts/setup-libtorch.sh); binaries will need LD_LIBRARY_PATH"
        ),
    }
}
