//! Validation loss over the sequential val windows.

use burn::tensor::Device;
use mla_data::{TokenBatcher, ValWindows};
use mla_model::Lm;

/// Mean next-token loss over the first `max_batches` batches of `batch` windows (all windows
/// when `None`), weighted by window count so a short last batch counts for what it holds.
/// `model` must live on `device` without autodiff (see `Module::valid`).
pub fn evaluate(
    model: &Lm,
    windows: &ValWindows,
    batch: usize,
    max_batches: Option<usize>,
    device: &Device,
) -> f32 {
    let [sum, count] = evaluate_sums(model, windows, batch, max_batches, device, 0, 1);
    (sum / count.max(1.0)) as f32
}

/// This rank's share of [`evaluate`]: batches `rank`, `rank + world`, ... of the same
/// batches, as `[loss x windows summed, windows]`, to be summed over the ranks.
pub fn evaluate_sums(
    model: &Lm,
    windows: &ValWindows,
    batch: usize,
    max_batches: Option<usize>,
    device: &Device,
    rank: usize,
    world: usize,
) -> [f64; 2] {
    let n = windows.num_windows();
    let mut sum = 0.0f64;
    let mut count = 0usize;
    for start in (0..n)
        .step_by(batch)
        .take(max_batches.unwrap_or(usize::MAX))
        .skip(rank)
        .step_by(world)
    {
        let ws: Vec<Vec<u32>> = (start..(start + batch).min(n))
            .map(|i| windows.window(i))
            .collect();
        let b = TokenBatcher.make(&ws, device);
        let loss = model.loss(b.inputs, b.targets).into_scalar::<f32>() as f64;
        sum += loss * ws.len() as f64;
        count += ws.len();
    }
    [sum, count as f64]
}
