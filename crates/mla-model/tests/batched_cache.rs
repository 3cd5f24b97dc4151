//! The batched cache: sequences of different lengths decoded together give, at every step,
//! the logits of a full forward pass over each sequence, for every variant and both MLA cache
//! modes, also after a slot is handed to a new, shorter sequence (its stale rows masked).

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{device, variants};
use mla_model::accounting::{self, CacheMode};
use mla_model::{KvCache, Lm};

fn tokens(rows: &[Vec<i64>]) -> Tensor<2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat(), [b, t]), &device())
}

/// A deterministic token stream (an LCG, independent of any RNG crate).
fn sequence(t: usize, vocab: usize, seed: u64) -> Vec<i64> {
    let mut s = seed
        .wrapping_mul(2862933555777941757)
        .wrapping_add(3037000493);
    (0..t)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as i64
        })
        .collect()
}

fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, v] = t.dims();
    let flat = t.into_data().try_into_vec::<f32>().unwrap();
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= tol, "{what}: max abs diff {worst} > {tol}");
}

/// Logits of one full forward pass over `seq`, at every position.
fn full_logits(model: &Lm, seq: &[i64]) -> Vec<Vec<f32>> {
    let t = seq.len();
    let all = model.forward(tokens(&[seq.to_vec()])); // [1, t, v]
    let v = all.dims()[2];
    rows(all.reshape([t, v]))
}

/// Prefill `prompts` together (padded on the right) into an ordinary cache and return it with
/// each prompt's logits at its last token.
fn prefill(model: &Lm, mode: CacheMode, prompts: &[&[i64]]) -> (KvCache, Vec<Vec<f32>>) {
    let longest = prompts.iter().map(|p| p.len()).max().unwrap();
    let padded: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            let mut r = p.to_vec();
            r.resize(longest, 0);
            r
        })
        .collect();
    let last: Vec<usize> = prompts.iter().map(|p| p.len() - 1).collect();
    let mut cache = model.new_cache(mode);
    let logits = model.forward_at(tokens(&padded), Some(&mut cache), &last);
    (cache, rows(logits))
}

#[test]
fn batched_cached_decode_equals_the_full_forward_at_every_step() {
    const TOL: f32 = 2e-5;
    for (name, cfg) in variants() {
        device().seed(4);
        let model = Lm::new(&cfg, &device());
        let v = cfg.vocab_size;
        // Three sequences, prompts of 3, 9 and 5 tokens; a fourth takes slot 1 later.
        let seqs: Vec<Vec<i64>> = (0..4).map(|i| sequence(20, v, 10 + i)).collect();
        let full: Vec<Vec<Vec<f32>>> = seqs.iter().map(|s| full_logits(&model, s)).collect();
        for mode in [CacheMode::Latent, CacheMode::Naive] {
            let what = |s: &str| format!("{name} {mode:?}: {s}");
            let per_token = accounting::kv_cache(&cfg, mode).bytes_per_token;
            let mut lens = [3usize, 9, 5];
            let prompts: Vec<&[i64]> = (0..3).map(|i| &seqs[i][..lens[i]]).collect();
            let (pre, first) = prefill(&model, mode, &prompts);
            for i in 0..3 {
                assert_close(&first[i], &full[i][lens[i] - 1], TOL, &what("prefill"));
            }
            // Room for 6 tokens a slot: the buffers grow (zeroed) on the way.
            let mut cache = model.new_batched_cache(mode, 3, 6);
            for (slot, &len) in lens.iter().enumerate() {
                cache.insert(slot, &pre, slot, len);
            }
            assert_eq!(cache.slot_lens().unwrap(), &lens[..]);
            assert_eq!(cache.bytes_held(), per_token * lens.iter().sum::<usize>());
            // Which sequence each slot holds.
            let mut holds = [0usize, 1, 2];
            for step in 0..8 {
                if step == 4 {
                    // Slot 1 (12 tokens cached) gets sequence 3 with a 2-token prompt: its
                    // rows 2.. are now stale and must be masked.
                    let (alone, logits) = prefill(&model, mode, &[&seqs[3][..2]]);
                    assert_close(&logits[0], &full[3][1], TOL, &what("reused slot prefill"));
                    cache.insert(1, &alone, 0, 2);
                    holds[1] = 3;
                    lens[1] = 2;
                }
                let next: Vec<Vec<i64>> = (0..3).map(|s| vec![seqs[holds[s]][lens[s]]]).collect();
                let logits = rows(model.forward_cached_last(tokens(&next), &mut cache));
                for s in 0..3 {
                    let want = &full[holds[s]][lens[s]];
                    assert_close(
                        &logits[s],
                        want,
                        TOL,
                        &what(&format!("step {step} slot {s}")),
                    );
                    lens[s] += 1;
                }
                assert_eq!(cache.slot_lens().unwrap(), &lens[..], "{}", what("lens"));
                assert_eq!(
                    cache.bytes_held(),
                    per_token * lens.iter().sum::<usize>(),
                    "{}",
                    what("bytes held")
                );
            }
            assert!(
                cache.bytes_reserved() >= per_token * 3 * 17,
                "{}",
                what("grown")
            );
        }
    }
}

/// A freed slot (length 0) keeps decoding a placeholder without disturbing the others, and a
/// batch cut back to a shorter length (as the throughput benchmark repeats its runs) decodes
/// as before.
#[test]
fn freed_and_truncated_slots_decode_as_before() {
    let (name, cfg) = variants()
        .into_iter()
        .find(|(n, _)| *n == "mla-q-lora")
        .unwrap();
    device().seed(5);
    let model = Lm::new(&cfg, &device());
    let seqs: Vec<Vec<i64>> = (0..2)
        .map(|i| sequence(12, cfg.vocab_size, 30 + i))
        .collect();
    let full: Vec<Vec<Vec<f32>>> = seqs.iter().map(|s| full_logits(&model, s)).collect();
    let (pre, _) = prefill(&model, CacheMode::Latent, &[&seqs[0][..4], &seqs[1][..4]]);
    let mut cache = model.new_batched_cache(CacheMode::Latent, 2, 12);
    cache.insert(0, &pre, 0, 4);
    cache.insert(1, &pre, 1, 4);
    // Slot 1 is freed: it decodes a placeholder at position 0 and is cut back to 0 each step.
    cache.truncate_slot(1, 0);
    for p in 4..8 {
        let logits =
            rows(model.forward_cached_last(tokens(&[vec![seqs[0][p]], vec![0]]), &mut cache));
        assert_close(&logits[0], &full[0][p], 2e-5, name);
        assert!(
            logits[1].iter().all(|x| x.is_finite()),
            "{name}: placeholder row"
        );
        cache.truncate_slot(1, 0);
    }
    assert_eq!(cache.slot_lens().unwrap(), &[8, 0]);
    // Cut slot 0 back to 6 tokens and decode positions 6.. again.
    cache.truncate_slot(0, 6);
    assert_eq!(
        cache.len(),
        6,
        "the attended view shrinks with the longest slot"
    );
    let logits = rows(model.forward_cached_last(tokens(&[vec![seqs[0][6]], vec![0]]), &mut cache));
    assert_close(&logits[0], &full[0][6], 2e-5, name);
}
