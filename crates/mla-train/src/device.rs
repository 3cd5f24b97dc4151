//! Device selection: `cpu` (burn's pure-Rust flex backend, the default), and with the `tch`
//! feature `tch-cpu` (libtorch on CPU), `cuda` / `cuda:N` (libtorch CUDA).

use burn::tensor::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    TchCpu,
    Cuda(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}; use \"cpu\", \"tch-cpu\", \"cuda\" or \"cuda:N\"")]
    Unknown(String),
    #[error(
        "device {0:?} needs libtorch: this `mla` was built without the `tch` feature. Build with \
         `scripts/setup-libtorch.sh` (add --cpu for the CPU-only libtorch), source .venv/libtorch.env, \
         then `cargo build --release -p mla-model -p mla-train --features mla-train/tch --target-dir target-tch` (see README, libtorch)"
    )]
    NotBuilt(String),
    #[error(
        "cuda:{index}: libtorch sees {found} CUDA device(s){}",
        if *.found == 0 { " (a CPU-only libtorch, or no NVIDIA GPU and driver); use device = \"tch-cpu\" or \"cpu\", or the full install of scripts/setup-libtorch.sh" } else { "" }
    )]
    NoCuda { index: usize, found: i64 },
}

pub fn parse(s: &str) -> Result<DeviceSpec, DeviceError> {
    match s {
        "cpu" => Ok(DeviceSpec::Cpu),
        "tch-cpu" => Ok(DeviceSpec::TchCpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| DeviceError::Unknown(s.to_string())),
    }
}

impl DeviceSpec {
    /// The device (without autodiff; `.autodiff()` gives the training one).
    // burn 0.22 marks its libtorch backend deprecated in favour of CubeCL; it is still the one
    // that runs on libtorch's CPU and CUDA kernels, which is what the `tch` feature is for.
    #[allow(deprecated)]
    pub fn device(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::flex()),
            #[cfg(feature = "tch")]
            DeviceSpec::TchCpu => {
                keep_freed_memory();
                Ok(Device::libtorch())
            }
            #[cfg(feature = "tch")]
            DeviceSpec::Cuda(i) => {
                let found = tch::Cuda::device_count();
                if (i as i64) < found {
                    Ok(Device::libtorch_cuda(i))
                } else {
                    Err(DeviceError::NoCuda { index: i, found })
                }
            }
            #[cfg(not(feature = "tch"))]
            _ => Err(DeviceError::NotBuilt(self.to_string())),
        }
    }
}

/// libtorch allocates CPU tensors with glibc's malloc, which by default gives blocks of a few
/// MB back to the kernel as soon as they are freed (mmap for large blocks, trimming the heap
/// top), so every training step faults in and zeroes fresh pages for the same activations
/// again. Keep freed memory in the heap instead (at most 1 GiB of it above the live set):
/// 2-3% more tokens/s at the bench-train sizes. Rust's own allocations go through mimalloc.
#[cfg(feature = "tch")]
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets allocator tunables (thread-safe, under glibc's arena lock); no
    // memory is touched. Its return value (0 = rejected) needs no handling: the defaults stay.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::TchCpu => f.write_str("tch-cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(parse("tch-cpu").unwrap(), DeviceSpec::TchCpu);
        assert_eq!(parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", ""] {
            assert!(
                parse(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("unknown device")
            );
        }
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn libtorch_devices_say_how_to_build_for_them() {
        let e = DeviceSpec::Cuda(0).device().unwrap_err();
        assert!(e.to_string().contains("--features mla-train/tch"), "{e}");
    }
}
