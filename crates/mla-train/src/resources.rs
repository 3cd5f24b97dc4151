//! What training costs the machine, for the log lines and metrics: model FLOPs utilisation
//! (MFU, as PaLM defines it: achieved model FLOPs over the hardware's peak) and peak memory.

use crate::config::TrainDType;
use crate::device::DeviceSpec;

/// Dense peak TFLOPS (no sparsity) of NVIDIA data-centre and workstation cards, bf16 tensor
/// cores and plain fp32, from the vendors' datasheets: the `peak_tflops` a run on one of them
/// uses unless `[train] peak_tflops` says otherwise. Matched by substring of the device name,
/// in order (the first match wins).
const KNOWN_PEAKS: &[(&str, f64, f64)] = &[
    ("B200", 2250.0, 80.0),
    ("H200", 989.4, 66.9),
    ("H100 PCIe", 756.0, 51.2),
    ("H100", 989.4, 66.9),
    ("H800", 989.4, 66.9),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 30.3),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
    ("RTX 4090", 165.2, 82.6),
    ("RTX 3090", 71.0, 35.6),
    ("V100", 125.0, 15.7),
];

/// The peak TFLOPS of a device by its name, for the dtype trained in.
pub fn known_peak_tflops(device_name: &str, dtype: TrainDType) -> Option<f64> {
    KNOWN_PEAKS
        .iter()
        .find(|(pattern, _, _)| device_name.contains(pattern))
        .map(|&(_, bf16, f32)| match dtype {
            TrainDType::Bf16 => bf16,
            TrainDType::F32 => f32,
        })
}

/// The name of a CUDA device (None on CPU, or in a build without CUDA).
pub fn device_name(device: DeviceSpec) -> Option<String> {
    #[cfg(feature = "tch")]
    if let DeviceSpec::Cuda(i) = device {
        return mla_c10d::cuda::device_name(i);
    }
    let _ = device;
    None
}

/// MFU of one device: its share of the tokens/s times the FLOPs per token, over its peak.
pub fn mfu(tokens_per_s: f64, devices: usize, flops_per_token: u64, peak_tflops: f64) -> f64 {
    tokens_per_s / devices.max(1) as f64 * flops_per_token as f64 / (peak_tflops * 1e12)
}

/// Peak memory of this process: the CUDA caching allocator's peak of allocated bytes on a GPU
/// (what `torch.cuda.max_memory_allocated` reports); on CPU the peak resident set (VmHWM).
pub fn peak_memory_bytes(device: DeviceSpec) -> Option<u64> {
    #[cfg(feature = "tch")]
    if let DeviceSpec::Cuda(i) = device {
        return mla_c10d::cuda::peak_allocated(i);
    }
    let _ = device;
    peak_rss_bytes()
}

/// `VmHWM` of /proc/self/status (Linux); None elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_cards_have_their_datasheet_peaks() {
        assert_eq!(
            known_peak_tflops("NVIDIA H100 80GB HBM3", TrainDType::Bf16),
            Some(989.4)
        );
        assert_eq!(
            known_peak_tflops("NVIDIA H100 PCIe", TrainDType::Bf16),
            Some(756.0)
        );
        assert_eq!(
            known_peak_tflops("NVIDIA A100-SXM4-40GB", TrainDType::F32),
            Some(19.5)
        );
        assert_eq!(
            known_peak_tflops("NVIDIA L40S", TrainDType::Bf16),
            Some(362.1)
        );
        assert_eq!(
            known_peak_tflops("NVIDIA L4", TrainDType::Bf16),
            Some(121.0)
        );
        assert_eq!(known_peak_tflops("Some CPU", TrainDType::F32), None);
    }

    #[test]
    fn mfu_is_achieved_over_peak_per_device() {
        // 1e6 tokens/s over 2 devices at 1e9 FLOPs/token = 5e14 FLOP/s each, of a 1000 TFLOPS peak.
        assert!((mfu(1e6, 2, 1_000_000_000, 1000.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_peak_resident_set_is_read() {
        let before = peak_rss_bytes().unwrap();
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        let after = peak_rss_bytes().unwrap();
        assert!(after >= before && after >= 64 << 20, "{before} -> {after}");
    }
}
