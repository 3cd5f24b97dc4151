//! The `mla` command line: a thin layer that parses arguments, calls the library crates and
//! turns their errors into one clear line and a non-zero exit.

mod cli;

// Training allocates and frees many large temporary tensors every step; glibc's malloc hands
// those back to the kernel (mmap/munmap) each time, which costs page faults. mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
