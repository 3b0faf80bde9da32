//! Unit tests of the sampler.

use super::*;
use crate::sampler_ops::by_value_desc;
use crate::TokenHistory;

fn ctx(seed: u64, token_index: usize) -> SampleContext<'static> {
    SampleContext {
        seed,
        token_index,
        ..Default::default()
    }
}

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
    let row = vec![0.5, 3.0, -1.0, 3.0, f32::NAN];
    let with_logprob = SamplingParams {
        logprobs: Some(0),
        ..params(0.0)
    };
    let s = sample(&mut row.clone(), &with_logprob, &ctx(1, 0));
    assert_eq!(s.token_id, 1);
    let expected = 3.0 - (0.5f32.exp() + 2.0 * 3.0f32.exp() + (-1.0f32).exp()).ln();
    let logprob = s.logprob.expect("asked for");
    assert!((logprob - expected).abs() < 1e-5, "{logprob} vs {expected}");
    // Nobody asked for the logprob: the same token, and no log-sum-exp over the row.
    for temperature in [0.0, 0.7] {
        let s = sample(&mut row.clone(), &params(temperature), &ctx(1, 0));
        let asked = SamplingParams {
            logprobs: Some(0),
            ..params(temperature)
        };
        assert_eq!(s.token_id, sample(&mut row.clone(), &asked, &ctx(1, 0)).token_id);
        assert!(s.logprob.is_none() && s.rank.is_none());
    }
}

#[test]
fn top_k_one_equals_greedy() {
    for seed in 0..50 {
        let row = logits(1000, seed);
        let greedy = sample(&mut row.clone(), &params(0.0), &ctx(seed, 3)).token_id;
        let p = SamplingParams {
            top_k: 1,
            temperature: 0.7,
            ..Default::default()
        };
        assert_eq!(sample(&mut row.clone(), &p, &ctx(seed, 3)).token_id, greedy);
    }
}

#[test]
fn same_seed_and_index_give_same_token() {
    let row = logits(5000, 9);
    let p = SamplingParams {
        temperature: 1.3,
        top_p: 0.9,
        logprobs: Some(0),
        ..Default::default()
    };
    let a = sample(&mut row.clone(), &p, &ctx(42, 7));
    let b = sample(&mut row.clone(), &p, &ctx(42, 7));
    assert_eq!(a, b);
    let distinct: std::collections::HashSet<u32> = (0..20)
        .map(|i| sample(&mut row.clone(), &p, &ctx(42, i)).token_id)
        .collect();
    assert!(distinct.len() > 1);
}

fn frequencies(row: &[f32], p: &SamplingParams, draws: usize) -> Vec<f64> {
    let mut counts = vec![0.0; row.len()];
    for d in 0..draws {
        let token = sample(&mut row.to_vec(), p, &ctx(d as u64, d % 5)).token_id;
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

/// Full-sort reference of the top-p path: min-p, then the nucleus, walk in index order.
fn reference_top_p(row: &[f32], p: &SamplingParams, u: f64) -> u32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / p.temperature;
    let w: Vec<f32> = row.iter().map(|&l| fast_exp((l - max) * inv_t)).collect();
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|&a, &b| by_value_desc(&w, a, b));
    let sorted: Vec<f64> = idx.iter().map(|&i| f64::from(w[i as usize])).collect();
    let keep = keep_prefix(&sorted, p.top_p, p.min_p);
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
            let got = sample(&mut row.clone(), &p, &ctx(seed, 0)).token_id;
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
    let s = sample(&mut row.clone(), &p, &ctx(11, 0));
    assert!((s.logprob.unwrap() - (row[s.token_id as usize] - lse)).abs() < 1e-4);
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

#[test]
fn adjustments_change_the_choice_but_not_the_logprobs() {
    let row = vec![2.0f32, 1.0, -1.0, 0.5];
    let lse = row.iter().map(|&l| l.exp()).sum::<f32>().ln();
    let p = SamplingParams {
        temperature: 0.0,
        logit_bias: vec![(2, 100.0)],
        logprobs: Some(1),
        ..Default::default()
    };
    let s = sample(&mut row.clone(), &p, &ctx(0, 0));
    assert_eq!((s.token_id, s.rank), (2, Some(4)));
    assert!((s.logprob.unwrap() - (-1.0 - lse)).abs() < 1e-5);
    assert_eq!(s.top_logprobs.len(), 1);
    assert_eq!(s.top_logprobs[0].0, 0);
    let probs = probabilities(&row, &p, &ctx(0, 0));
    assert_eq!(probs, vec![0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn min_tokens_masks_eos_through_the_context() {
    let row = vec![0.0f32, 5.0, 1.0];
    let p = SamplingParams {
        temperature: 0.0,
        min_tokens: 2,
        ..Default::default()
    };
    let at = |token_index| SampleContext {
        token_index,
        eos_token_ids: &[1],
        ..Default::default()
    };
    assert_eq!(sample(&mut row.clone(), &p, &at(1)).token_id, 2);
    assert_eq!(sample(&mut row.clone(), &p, &at(2)).token_id, 1);
}

#[test]
fn penalties_apply_only_with_a_history() {
    let row = vec![3.0f32, 2.9, 0.0];
    let p = SamplingParams {
        temperature: 0.0,
        repetition_penalty: 2.0,
        ..Default::default()
    };
    let history = TokenHistory::new(std::sync::Arc::from(&[0u32][..]), &[]);
    let with = SampleContext {
        history: Some(&history),
        ..Default::default()
    };
    assert_eq!(sample(&mut row.clone(), &p, &with).token_id, 1);
    assert_eq!(sample(&mut row.clone(), &p, &ctx(0, 0)).token_id, 0);
}

#[test]
fn sampled_rank_counts_strictly_larger_raw_logits() {
    let row = logits(400, 21);
    let p = SamplingParams {
        temperature: 5.0,
        logprobs: Some(2),
        ..Default::default()
    };
    for seed in 0..30 {
        let s = sample(&mut row.clone(), &p, &ctx(seed, 0));
        let chosen = row[s.token_id as usize];
        let larger = row.iter().filter(|&&l| l > chosen).count() as u32;
        assert_eq!(s.rank, Some(larger + 1));
    }
    assert_eq!(sample(&mut row.clone(), &params(2.0), &ctx(0, 0)).rank, None);
}

#[test]
fn frequencies_follow_the_adjusted_probabilities() {
    let row = [1.0f32, 0.2, 0.8, -0.5, 0.0, 0.6];
    let history = TokenHistory::new(std::sync::Arc::from(&[2u32, 5][..]), &[0, 0, 4]);
    let p = SamplingParams {
        temperature: 0.9,
        top_k: 5,
        top_p: 0.95,
        repetition_penalty: 1.3,
        frequency_penalty: 0.2,
        presence_penalty: 0.1,
        logit_bias: vec![(3, 0.7)],
        ..Default::default()
    };
    let c = |seed| SampleContext {
        seed,
        token_index: 3,
        history: Some(&history),
        eos_token_ids: &[],
    };
    let probs = probabilities(&row, &p, &c(0));
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    let mut counts = vec![0.0; row.len()];
    for seed in 0..20_000 {
        counts[sample(&mut row.to_vec(), &p, &c(seed)).token_id as usize] += 1.0;
    }
    for (i, &prob) in probs.iter().enumerate() {
        if prob == 0.0 {
            assert_eq!(counts[i], 0.0, "{counts:?} vs {probs:?}");
        }
    }
    let dof = probs.iter().filter(|&&q| q > 0.0).count() - 1;
    // 0.001 tails of chi-square with 1..=5 degrees of freedom.
    let critical = [10.83, 13.82, 16.27, 18.47, 20.52][dof - 1];
    assert!(chi_square(&counts, &probs) < critical, "{counts:?} vs {probs:?}");
}

#[test]
fn argmax_is_the_greedy_pick_with_ties_to_the_lowest_id() {
    assert_eq!(argmax(&mut [0.5, 2.0, 2.0, 1.0]), 1);
    assert_eq!(argmax(&mut [f32::NAN, 1.0, f32::NAN, 1.0]), 1);
    assert_eq!(argmax(&mut []), 0);
    // The same token `sample` picks at temperature 0, with and without adjustments.
    let row = [0.1, 3.0, -2.0, 3.0, f32::NAN, 2.5];
    let greedy = params(0.0);
    let biased = SamplingParams {
        logit_bias: vec![(5, 1.0)],
        ..params(0.0)
    };
    assert_eq!(
        sample(&mut row.to_vec(), &greedy, &ctx(0, 0)).token_id,
        argmax(&mut row.to_vec())
    );
    let mut adjusted = row.to_vec();
    adjusted[5] += 1.0;
    assert_eq!(
        sample(&mut row.to_vec(), &biased, &ctx(0, 0)).token_id,
        argmax(&mut adjusted)
    );
}
