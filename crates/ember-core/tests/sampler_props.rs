//! Property tests of the sampler: filters are respected, results are deterministic, and
//! log-probabilities are the raw log-softmax.

use ember_core::{sample, SampleContext, SamplingParams};
use proptest::prelude::*;

fn params() -> impl Strategy<Value = SamplingParams> {
    (
        0.0f32..3.0,
        prop_oneof![Just(-1i32), Just(0), 1..20i32],
        0.05f32..=1.0,
        prop_oneof![Just(0.0f32), 0.0f32..0.5],
    )
        .prop_map(|(temperature, top_k, top_p, min_p)| SamplingParams {
            temperature: if temperature < 0.3 { 0.0 } else { temperature },
            top_k,
            top_p,
            min_p,
            logprobs: Some(3),
            ..Default::default()
        })
}

proptest! {
    #[test]
    fn sampled_tokens_respect_the_filters(
        row in prop::collection::vec(-10.0f32..10.0, 1..300),
        params in params(),
        seed in any::<u64>(),
        index in 0usize..1000,
    ) {
        let ctx = SampleContext { seed, token_index: index, ..Default::default() };
        let a = sample(&mut row.clone(), &params, &ctx);
        let b = sample(&mut row.clone(), &params, &ctx);
        prop_assert_eq!(&a, &b);
        let token = a.token_id as usize;
        prop_assert!(token < row.len());
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let rank = row.iter().enumerate().filter(|&(i, &l)| l > row[token] || (l == row[token] && i < token)).count();
        if params.is_greedy() {
            prop_assert_eq!(rank, 0);
        }
        if params.top_k > 0 {
            prop_assert!(rank < params.top_k as usize, "rank {} with top_k {}", rank, params.top_k);
        }
        if params.min_p > 0.0 && !params.is_greedy() {
            let ratio = ((row[token] - max) / params.temperature).exp();
            prop_assert!(ratio >= params.min_p * 0.999, "ratio {} < min_p {}", ratio, params.min_p);
        }
        let lse = max + row.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let logprob = a.logprob.unwrap();
        prop_assert!((logprob - (row[token] - lse)).abs() < 1e-3, "{} vs {}", logprob, row[token] - lse);
        prop_assert_eq!(a.top_logprobs.len(), 3.min(row.len()));
        prop_assert!(a.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}
