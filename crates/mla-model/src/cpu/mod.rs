//! Pure-Rust CPU kernels on f32 slices, behind the flex backend's fused ops: tiled attention
//! and the vectorised `exp` it runs on. No burn types here; [`crate::fused`] wraps them.

pub mod exp;
pub mod flash;
mod gemm;
