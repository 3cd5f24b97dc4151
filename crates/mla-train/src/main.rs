//! The `mla` command line: a thin layer that parses arguments, calls the library crates and
//! turns their errors into one clear line and a non-zero exit.

mod cli;

// Training allocates and frees many large temporary tensors every step; glibc's malloc hands
// those back to the kernel (mmap/munmap) each time, which costs page faults. mimalloc keeps
// them once told to (see `keep_freed_memory`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

/// mimalloc v3's index of its `purge_delay` option (`enum mi_option_e` in mimalloc.h), which
/// libmimalloc-sys does not name. Checked by the test below against the option's default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// By default mimalloc gives freed memory back to the kernel a second after it was freed
/// (`purge_delay` 1000 ms in mimalloc v3), about a training step, so every step faulted in and
/// zeroed the same activations' pages again: `clear_page_erms` was 13% of a flex training step's
/// samples, and turning purging off gave 15-20% more tokens/s on the bench-train sizes. The
/// process then keeps its peak footprint, as PyTorch's caching allocators do.
fn keep_freed_memory() {
    #[allow(unsafe_code)]
    // SAFETY: sets one integer option before any other thread exists (the first thing main
    // does); mimalloc reads it on its next purge. No memory is touched.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<cli::Stopped>() {
            Some(stopped) => {
                eprintln!("{stopped}");
                ExitCode::from(stopped.code)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index still names `purge_delay`: it and its neighbours hold their defaults of
    /// mimalloc v3's options.c (`deprecated_eager_commit_delay` 1, `purge_delay` 1000,
    /// `use_numa_nodes` 0)
    /// until `keep_freed_memory` sets it to -1 (never purge).
    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reading and setting integer options; no memory is touched.
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        assert_eq!(
            [get(14), get(MI_OPTION_PURGE_DELAY), get(16)],
            [1, 1000, 0],
            "mimalloc's option table moved: look up purge_delay in its mimalloc.h"
        );
        keep_freed_memory();
        assert_eq!(get(MI_OPTION_PURGE_DELAY), -1);
    }
}
