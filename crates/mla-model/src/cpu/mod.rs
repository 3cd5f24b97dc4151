//! Pure-Rust CPU kernels on f32 slices, behind the flex backend's fused ops: tiled attention,
//! the row-wise log-softmax, SiLU and RMSNorm, and the vectorised `exp` they run on. No burn
//! types here; [`crate::fused`] wraps them.

pub mod exp;
pub mod flash;
mod gemm;
pub mod rows;
