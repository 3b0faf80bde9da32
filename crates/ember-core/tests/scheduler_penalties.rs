//! Penalties through the scheduler and a runner-side token history: preemption by recompute
//! must not change what a penalized, seeded request generates.

mod common;

use std::sync::Arc;

use common::FakeModel;
use ember_core::{Request, SamplingParams, Scheduler, SchedulerConfig, SchedulingPolicy};

fn config(num_blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: 16,
        max_model_len: 256,
        block_size: 2,
        num_blocks,
        enable_prefix_caching: true,
        long_prefill_token_threshold: 0,
        policy: SchedulingPolicy::Fcfs,
        sliding_window: None,
        max_loras: None,
        speculative: None,
    }
}

fn params(i: u32, penalized: bool) -> SamplingParams {
    let mut params = SamplingParams {
        max_tokens: Some(14),
        ignore_eos: true,
        temperature: 0.7,
        seed: Some(u64::from(i)),
        ..Default::default()
    };
    if penalized {
        params.repetition_penalty = 1.8;
        params.frequency_penalty = 0.7;
        params.presence_penalty = 0.4;
        params.logit_bias = vec![(3, 1.5)];
    }
    params
}

/// Outputs of 8 requests (even ones penalized unless `penalized` is false) and the number of
/// preemptions, with `num_blocks` blocks of 2 tokens.
fn run(num_blocks: usize, penalized: bool) -> (Vec<(String, Vec<u32>)>, u64) {
    let mut scheduler = Scheduler::new(config(num_blocks));
    let mut model = FakeModel::new(num_blocks, 2).with_real_sampler();
    for i in 0..8u32 {
        let prompt: Vec<u32> = (0..5 + i % 4).map(|j| (i * 7 + j) % 15 + 1).collect();
        let params = Arc::new(params(i, penalized && i % 2 == 0));
        let request = Request::new(format!("r{i}"), prompt, params, vec![common::EOS], 0, 0, 0.0);
        assert!(model.add(&mut scheduler, request));
    }
    model.run_to_completion(&mut scheduler);
    (model.sorted_outputs(), scheduler.stats().num_preemptions)
}

#[test]
fn preemption_keeps_penalized_outputs() {
    let (roomy, roomy_preemptions) = run(200, true);
    let (tight, tight_preemptions) = run(12, true);
    assert_eq!(roomy_preemptions, 0);
    assert!(tight_preemptions > 0);
    assert_eq!(roomy, tight);
}

#[test]
fn penalties_change_only_penalized_requests_and_reduce_repeats() {
    let (plain, _) = run(200, false);
    let (penalized, _) = run(200, true);
    let mut repeats = [0usize; 2];
    for ((id, a), (_, b)) in plain.iter().zip(&penalized) {
        let index: usize = id[1..].parse().unwrap();
        if index % 2 == 1 {
            assert_eq!(a, b, "{id} is not penalized");
            continue;
        }
        assert_ne!(a, b, "{id}");
        let prompt_len = 5 + index % 4;
        for (k, out) in [a, b].into_iter().enumerate() {
            let generated = &out[prompt_len..];
            let distinct: std::collections::HashSet<_> = generated.iter().collect();
            repeats[k] += generated.len() - distinct.len();
        }
    }
    assert!(
        repeats[1] < repeats[0],
        "repeats without / with penalties: {repeats:?}"
    );
}
