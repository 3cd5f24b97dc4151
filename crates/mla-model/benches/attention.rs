//! The attention op alone, forward + backward, fused against the explicit path it replaced, on
//! burn's flex CPU backend. A benchmark, not a test: `cargo bench --workspace --bench attention
//! [-- SEQ...]` (default 256 1024 2048).
//!
//! Shapes are the Shakespeare recipes' (4 heads; MLA q/k 96 wide = nope 64 + rope 32, v 64;
//! MHA 64/64) with 8192 tokens per call (batch = 8192 / seq), causal. The two kernels run
//! round-robin, each reporting its fastest of `ROUNDS` rounds, as milliseconds per call and
//! the explicit/fused ratio.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use mla_model::attention::sdpa::{AttentionKernel, causal_attention, set_attention_kernel};

const ROUNDS: usize = 3;
const CALLS: usize = 3;
const TOKENS: usize = 8192;
const HEADS: usize = 4;

fn main() {
    let seqs: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("context lengths"))
        .collect();
    let seqs = if seqs.is_empty() {
        vec![256, 1024, 2048]
    } else {
        seqs
    };
    let device = Device::flex().autodiff();
    println!("attention forward + backward, flex, {TOKENS} tokens per call, {HEADS} heads, causal");
    println!("| shape | context | batch | explicit ms | fused ms | explicit / fused |");
    println!("|---|---:|---:|---:|---:|---:|");
    for seq in seqs {
        let b = (TOKENS / seq).max(1);
        for (name, d_qk, d_v) in [("mla 96/64", 96, 64), ("mha 64/64", 64, 64)] {
            let n = Distribution::Normal(0.0, 1.0);
            let q = Tensor::<4>::random([b, HEADS, seq, d_qk], n, &device).require_grad();
            let k = Tensor::<4>::random([b, HEADS, seq, d_qk], n, &device).require_grad();
            let v = Tensor::<4>::random([b, HEADS, seq, d_v], n, &device).require_grad();
            let call = |kernel| {
                set_attention_kernel(kernel);
                let out = causal_attention(q.clone(), k.clone(), v.clone(), 0.1);
                let grads = out.sum().backward();
                // Wait for the gradients: flex runs eagerly, but read one value to be sure.
                q.grad(&grads)
                    .unwrap()
                    .slice_dim(3, 0..1)
                    .sum()
                    .into_scalar::<f32>()
            };
            let mut best = [f64::INFINITY; 2];
            for _ in 0..ROUNDS {
                for (i, kernel) in [AttentionKernel::Explicit, AttentionKernel::Fused]
                    .into_iter()
                    .enumerate()
                {
                    call(kernel); // warm-up
                    let t0 = Instant::now();
                    for _ in 0..CALLS {
                        call(kernel);
                    }
                    best[i] = best[i].min(t0.elapsed().as_secs_f64() * 1e3 / CALLS as f64);
                }
            }
            println!(
                "| {name} | {seq} | {b} | {:.1} | {:.1} | {:.2} |",
                best[0],
                best[1],
                best[0] / best[1]
            );
        }
    }
}
