//! Token sampling from one row of logits, with counter-based randomness: the draw for
//! output token `token_index` of a request depends only on its seed and that index, never
//! on what else is in the batch.
//!
//! Pipeline: greedy argmax when `temperature == 0`; otherwise temperature, top-k, top-p,
//! min-p, then inverse-CDF sampling with one uniform draw. Log-probabilities are the
//! log-softmax of the raw logits (temperature 1, no filtering), like vLLM's default.
//! The uniform draw walks the kept tokens best first under top-k, in id order otherwise;
//! either way each kept token is drawn with its renormalized probability.

use crate::sampler_ops::{
    exp_weights_in_place, fast_exp, pick_row, pick_sorted, retain_weights, sanitize_and_argmax, sum_exp,
    top_indices, top_p_cutoff,
};
use crate::sampling_params::SamplingParams;
use crate::step::{RequestId, SampledToken};

/// One sampled token and its log-probabilities.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The chosen token.
    pub token_id: u32,
    /// Log-softmax of the raw logits at the chosen token.
    pub logprob: f32,
    /// The `params.logprobs` best tokens `(token_id, logprob)`, best first (empty when not asked).
    pub top_logprobs: Vec<(u32, f32)>,
}

impl Sample {
    /// The step-loop form of this sample.
    pub fn into_sampled_token(self, request_id: RequestId) -> SampledToken {
        SampledToken {
            request_id,
            token_id: self.token_id,
            logprob: self.logprob,
            top_logprobs: self.top_logprobs,
        }
    }
}

/// SplitMix64 finalizer: a bijective 64-bit mix.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform draw in `[0, 1)` for output token `token_index` of the stream `seed`.
pub fn uniform(seed: u64, token_index: usize) -> f64 {
    let bits = splitmix64(splitmix64(seed) ^ splitmix64(token_index as u64 ^ 0xD1B5_4A32_D192_ED03));
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Sets the logits of EOS and stop tokens to `-inf` while fewer than `min_tokens` tokens
/// have been generated (`token_index < params.min_tokens`), so they cannot be sampled.
pub fn mask_stop_tokens_before_min(
    logits: &mut [f32],
    params: &SamplingParams,
    eos_token_ids: &[u32],
    token_index: usize,
) {
    if token_index >= params.min_tokens {
        return;
    }
    let eos = eos_token_ids.iter().filter(|_| !params.ignore_eos);
    for &id in eos.chain(&params.stop_token_ids) {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Samples output token `token_index` of a request from one row of `logits` (`[vocab]`).
///
/// The row is used as scratch: NaNs become `-inf`, and in the non-greedy paths entries may
/// be overwritten with unnormalized probabilities.
pub fn sample(logits: &mut [f32], params: &SamplingParams, seed: u64, token_index: usize) -> Sample {
    let Some((max_idx, max)) = sanitize_and_argmax(logits) else {
        return Sample {
            token_id: 0,
            logprob: f32::NEG_INFINITY,
            top_logprobs: Vec::new(),
        };
    };
    let lse = if max.is_finite() {
        max + sum_exp(logits, max).ln() as f32
    } else {
        max
    };
    let logprob_of = |raw: f32| {
        if max.is_finite() {
            raw - lse
        } else {
            f32::NEG_INFINITY
        }
    };
    let top_logprobs = match params.logprobs {
        Some(k) if k > 0 => top_indices(logits, k)
            .into_iter()
            .map(|i| (i, logprob_of(logits[i as usize])))
            .collect(),
        _ => Vec::new(),
    };
    let (token_id, raw) = if params.is_greedy() || !max.is_finite() {
        (max_idx as u32, max)
    } else {
        sample_random(logits, params, uniform(seed, token_index), max)
    };
    Sample {
        token_id,
        logprob: logprob_of(raw),
        top_logprobs,
    }
}

/// Non-greedy sampling; returns the token and its raw logit. `max` is the finite row maximum.
fn sample_random(logits: &mut [f32], params: &SamplingParams, u: f64, max: f32) -> (u32, f32) {
    let inv_t = 1.0 / params.temperature;
    let vocab = logits.len();
    let top_k = usize::try_from(params.top_k).ok().filter(|&k| k > 0 && k < vocab);
    if let Some(k) = top_k {
        let cands = top_indices(logits, k);
        let weights: Vec<f64> = cands
            .iter()
            .map(|&i| f64::from(fast_exp((logits[i as usize] - max) * inv_t)))
            .collect();
        let total = weights.iter().sum();
        let keep = keep_prefix(&weights, total, params.top_p, params.min_p);
        let token = cands[pick_sorted(&weights[..keep], u)];
        return (token, logits[token as usize]);
    }
    // From here on the row holds weights exp((l - max) / T) in [0, 1]; the top one is 1.
    let mut total = exp_weights_in_place(logits, max, inv_t);
    let min_p = params.min_p;
    if params.top_p < 1.0 {
        // Top-p keeps a best-first prefix, min-p too: keep their intersection.
        let cutoff = top_p_cutoff(logits, f64::from(params.top_p) * total);
        let (cw, ci) = (logits[cutoff as usize], cutoff as usize);
        total = retain_weights(logits, |i, w| (w > cw || (w == cw && i <= ci)) && w >= min_p);
    } else if min_p > 0.0 {
        total = retain_weights(logits, |_, w| w >= min_p);
    }
    let token = pick_row(logits, total, u);
    (token as u32, max + params.temperature * logits[token].ln())
}

/// How many of the best-first `weights` survive top-p (against `total`) and min-p (against
/// the best weight, which is 1); at least one.
fn keep_prefix(weights: &[f64], total: f64, top_p: f32, min_p: f32) -> usize {
    let mut keep = weights.len();
    if top_p < 1.0 {
        let target = f64::from(top_p) * total;
        let mut cum = 0.0;
        for (j, &w) in weights.iter().enumerate() {
            if cum >= target {
                keep = j;
                break;
            }
            cum += w;
        }
    }
    if min_p > 0.0 {
        keep = keep.min(weights.partition_point(|&w| w >= f64::from(min_p)));
    }
    keep.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler_ops::by_value_desc;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..Default::default()
        }
    }

    fn logits(n: usize, seed: u64) -> Vec<f32> {
        (0..n).map(|i| (uniform(seed, i) * 12.0 - 6.0) as f32).collect()
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut row = vec![0.5, 3.0, -1.0, 3.0, f32::NAN];
        let s = sample(&mut row, &params(0.0), 1, 0);
        assert_eq!(s.token_id, 1);
        let expected = 3.0 - (0.5f32.exp() + 2.0 * 3.0f32.exp() + (-1.0f32).exp()).ln();
        assert!((s.logprob - expected).abs() < 1e-5, "{} vs {expected}", s.logprob);
    }

    #[test]
    fn top_k_one_equals_greedy() {
        for seed in 0..50 {
            let row = logits(1000, seed);
            let greedy = sample(&mut row.clone(), &params(0.0), seed, 3).token_id;
            let p = SamplingParams {
                top_k: 1,
                temperature: 0.7,
                ..Default::default()
            };
            assert_eq!(sample(&mut row.clone(), &p, seed, 3).token_id, greedy);
        }
    }

    #[test]
    fn same_seed_and_index_give_same_token() {
        let row = logits(5000, 9);
        let p = SamplingParams {
            temperature: 1.3,
            top_p: 0.9,
            ..Default::default()
        };
        let a = sample(&mut row.clone(), &p, 42, 7);
        let b = sample(&mut row.clone(), &p, 42, 7);
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<u32> = (0..20)
            .map(|i| sample(&mut row.clone(), &p, 42, i).token_id)
            .collect();
        assert!(distinct.len() > 1);
    }

    fn frequencies(row: &[f32], p: &SamplingParams, draws: usize) -> Vec<f64> {
        let mut counts = vec![0.0; row.len()];
        for d in 0..draws {
            let token = sample(&mut row.to_vec(), p, d as u64, d % 5).token_id;
            counts[token as usize] += 1.0;
        }
        counts
    }

    fn chi_square(counts: &[f64], probs: &[f64]) -> f64 {
        let n: f64 = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .filter(|(_, &p)| p > 0.0)
            .map(|(&c, &p)| (c - n * p).powi(2) / (n * p))
            .sum()
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let row = [0.0f32, 1.0, 2.0, 0.5];
        let t = 0.8f64;
        let exps: Vec<f64> = row.iter().map(|&l| (f64::from(l) / t).exp()).collect();
        let z: f64 = exps.iter().sum();
        let probs: Vec<f64> = exps.iter().map(|e| e / z).collect();
        let counts = frequencies(&row, &params(0.8), 40_000);
        // 3 degrees of freedom: 16.27 is the 0.001 tail.
        assert!(chi_square(&counts, &probs) < 16.27, "{counts:?} vs {probs:?}");
    }

    #[test]
    fn filters_drop_tokens_and_renormalize() {
        let row = [3.0f32, 2.0, 1.0, 0.0, -1.0];
        let exps: Vec<f64> = row.iter().map(|&l| f64::from(l).exp()).collect();
        // top_k = 3, top_p = 0.8: the nucleus of the top-3 renormalized is {0, 1}.
        let p = SamplingParams {
            top_k: 3,
            top_p: 0.8,
            ..Default::default()
        };
        let counts = frequencies(&row, &p, 20_000);
        assert_eq!(counts[2] + counts[3] + counts[4], 0.0, "{counts:?}");
        let z = exps[0] + exps[1];
        assert!(chi_square(&counts, &[exps[0] / z, exps[1] / z, 0.0, 0.0, 0.0]) < 10.83);
        // min_p = 0.3 keeps tokens with p >= 0.3 * p_max: {0, 1} (e^-1 = 0.37 > 0.3 > e^-2).
        let p = SamplingParams {
            min_p: 0.3,
            ..Default::default()
        };
        let counts = frequencies(&row, &p, 20_000);
        assert_eq!(counts[2] + counts[3] + counts[4], 0.0, "{counts:?}");
    }

    /// Full-sort reference of the top-p path: keep the nucleus (and min-p), walk in index order.
    fn reference_top_p(row: &[f32], p: &SamplingParams, u: f64) -> u32 {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / p.temperature;
        let w: Vec<f32> = row.iter().map(|&l| fast_exp((l - max) * inv_t)).collect();
        let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        idx.sort_by(|&a, &b| by_value_desc(&w, a, b));
        let sorted: Vec<f64> = idx.iter().map(|&i| f64::from(w[i as usize])).collect();
        let keep = keep_prefix(&sorted, total, p.top_p, p.min_p);
        let mut kept = vec![0.0f32; row.len()];
        for &i in &idx[..keep] {
            kept[i as usize] = w[i as usize];
        }
        let kept_total: f64 = kept.iter().map(|&x| f64::from(x)).sum();
        let target = u * kept_total;
        let mut cum = 0.0;
        for (i, &x) in kept.iter().enumerate() {
            cum += f64::from(x);
            if x > 0.0 && cum > target {
                return i as u32;
            }
        }
        idx[keep - 1]
    }

    #[test]
    fn top_p_matches_a_full_sort() {
        for (temperature, top_p, min_p) in [
            (1.0, 0.9, 0.0),
            (3.0, 0.95, 0.0),
            (0.5, 0.5, 0.0),
            (50.0, 0.99, 0.5),
            (2.0, 0.97, 0.01),
        ] {
            let p = SamplingParams {
                temperature,
                top_p,
                min_p,
                ..Default::default()
            };
            for seed in 0..20 {
                let row = logits(20_000, seed + 100);
                let got = sample(&mut row.clone(), &p, seed, 0).token_id;
                assert_eq!(
                    got,
                    reference_top_p(&row, &p, uniform(seed, 0)),
                    "T={temperature} p={top_p}"
                );
            }
        }
    }

    #[test]
    fn logprobs_are_raw_log_softmax() {
        let row = logits(300, 5);
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let p = SamplingParams {
            temperature: 2.0,
            top_p: 0.7,
            logprobs: Some(3),
            ..Default::default()
        };
        let s = sample(&mut row.clone(), &p, 11, 0);
        assert!((s.logprob - (row[s.token_id as usize] - lse)).abs() < 1e-4);
        assert_eq!(s.top_logprobs.len(), 3);
        let mut sorted = row.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for (j, &(id, lp)) in s.top_logprobs.iter().enumerate() {
            assert_eq!(row[id as usize], sorted[j]);
            assert!((lp - (sorted[j] - lse)).abs() < 1e-5);
        }
    }

    #[test]
    fn min_tokens_masks_eos_and_stop_ids() {
        let p = SamplingParams {
            min_tokens: 2,
            stop_token_ids: vec![3],
            ..Default::default()
        };
        let mut row = vec![0.0; 5];
        mask_stop_tokens_before_min(&mut row, &p, &[1], 1);
        assert_eq!(row, vec![0.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0]);
        let mut row = vec![0.0; 5];
        mask_stop_tokens_before_min(&mut row, &p, &[1], 2);
        assert_eq!(row, vec![0.0; 5]);
    }

    #[test]
    fn uniform_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..1000).map(|i| uniform(3, i)).collect();
        assert!(draws.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = draws.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05);
        assert_ne!(uniform(1, 0), uniform(2, 0));
    }
}
