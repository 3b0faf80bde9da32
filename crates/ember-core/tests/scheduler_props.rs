//! Property tests: random interleavings of add / abort / step under tiny KV-cache and token
//! budgets, with and without speculative decoding (n-gram drafts verified by the fake model).
//! After every step the bookkeeping is consistent; every request that was not aborted
//! finishes with exactly the tokens it would produce alone; all blocks end up free.

mod common;

use std::sync::Arc;

use common::{reference_output, FakeModel, EOS};
use ember_core::{
    FinishReason, Request, SamplingParams, Scheduler, SchedulerConfig, SchedulingPolicy, SpeculativeConfig,
};
use proptest::prelude::*;

const MAX_MODEL_LEN: usize = 64;

#[derive(Clone, Debug)]
enum Op {
    Add {
        base: usize,
        prefix_len: usize,
        tail: Vec<u32>,
        max_tokens: usize,
        min_tokens: usize,
        priority: i32,
        ignore_eos: bool,
    },
    Abort(usize),
    /// Another completion of an earlier request: same prompt and params, sharing its prompt blocks.
    Fork(usize),
    Step,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 0..12usize, prop::collection::vec(1..16u32, 0..5), 1..8usize, 0..3usize, 0..3i32, any::<bool>())
            .prop_map(|(base, prefix_len, tail, max_tokens, min_tokens, priority, ignore_eos)| Op::Add {
                base,
                prefix_len,
                tail,
                max_tokens,
                min_tokens: min_tokens.min(max_tokens),
                priority,
                ignore_eos,
            }),
        1 => (0..64usize).prop_map(Op::Abort),
        1 => (0..64usize).prop_map(Op::Fork),
        4 => Just(Op::Step),
    ]
}

fn config() -> impl Strategy<Value = SchedulerConfig> {
    (
        2..=4usize,
        3..=14usize,
        1..=16usize,
        1..=5usize,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0usize), 1..=6usize],
        prop_oneof![Just(None), (1..=9usize).prop_map(Some)],
        prop_oneof![
            Just(None),
            (1..=4usize, 1..=2usize, any::<bool>()).prop_map(|(k, min_n, adaptive)| Some(
                SpeculativeConfig {
                    adaptive,
                    max_num_seqs_to_speculate: 0,
                    ..SpeculativeConfig::ngram(k, min_n, 3)
                }
            )),
        ],
    )
        .prop_map(
            |(
                block_size,
                num_blocks,
                budget,
                max_num_seqs,
                caching,
                priority,
                threshold,
                window,
                speculative,
            )| {
                SchedulerConfig {
                    max_num_seqs,
                    max_num_batched_tokens: budget,
                    max_model_len: MAX_MODEL_LEN,
                    block_size,
                    num_blocks,
                    enable_prefix_caching: caching,
                    long_prefill_token_threshold: threshold,
                    policy: if priority {
                        SchedulingPolicy::Priority
                    } else {
                        SchedulingPolicy::Fcfs
                    },
                    sliding_window: window,
                    max_loras: None,
                    speculative,
                }
            },
        )
}

fn bases() -> [Vec<u32>; 3] {
    [
        (1..=12).collect(),
        (1..=12).map(|t| t % 5 + 1).collect(),
        (1..=12).rev().collect(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_invariants(config in config(), ops in prop::collection::vec(op(), 1..60)) {
        let mut scheduler = Scheduler::new(config.clone());
        let mut model = FakeModel::new(config.num_blocks, config.block_size).with_sliding_window(config.sliding_window);
        let bases = bases();
        let mut added: Vec<(Arc<str>, Vec<u32>, SamplingParams)> = Vec::new();
        let mut aborted = std::collections::HashSet::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Add { base, prefix_len, tail, max_tokens, min_tokens, priority, ignore_eos } => {
                    let mut prompt = bases[base][..prefix_len].to_vec();
                    prompt.extend(tail);
                    let params = SamplingParams {
                        max_tokens: Some(max_tokens),
                        min_tokens,
                        ignore_eos,
                        ..Default::default()
                    };
                    let id: Arc<str> = format!("r{n}").into();
                    let request = Request::new(
                        id.clone(), prompt.clone(), Arc::new(params.clone()), vec![EOS], n as u64, priority, n as f64,
                    );
                    let fits = (prompt.len() + max_tokens - 1).div_ceil(config.block_size) <= config.num_blocks;
                    let expect_ok = !prompt.is_empty() && prompt.len() + max_tokens <= MAX_MODEL_LEN && fits;
                    prop_assert_eq!(model.add(&mut scheduler, request), expect_ok);
                    if expect_ok {
                        added.push((id, prompt, params));
                    }
                }
                Op::Abort(i) => {
                    if let Some((id, _, _)) = added.get(i % added.len().max(1)) {
                        let live = model.tokens.contains_key(id);
                        let update = scheduler.finish_request(id, FinishReason::Abort);
                        prop_assert_eq!(update.is_some(), live);
                        if live {
                            model.finish(id, FinishReason::Abort);
                            aborted.insert(id.clone());
                        }
                    }
                }
                Op::Fork(i) => {
                    if let Some((source, prompt, params)) = added.get(i % added.len().max(1)).cloned() {
                        let id: Arc<str> = format!("r{n}").into();
                        let request = Request::new(
                            id.clone(), prompt.clone(), Arc::new(params.clone()), vec![EOS], n as u64, 0, n as f64,
                        )
                        .with_fork_of(Some(source));
                        prop_assert!(model.add(&mut scheduler, request));
                        added.push((id, prompt, params));
                    }
                }
                Op::Step => {
                    model.step(&mut scheduler);
                }
            }
            prop_assert_eq!(scheduler.check_invariants(), Ok(()));
        }
        let mut steps = 0;
        while scheduler.has_unfinished_requests() {
            model.step(&mut scheduler);
            prop_assert_eq!(scheduler.check_invariants(), Ok(()));
            steps += 1;
            prop_assert!(steps < 5_000, "no progress: {} running, {} waiting", scheduler.num_running(), scheduler.num_waiting());
        }
        for (id, prompt, params) in &added {
            if aborted.contains(id) {
                continue;
            }
            let (tokens, reason) = &model.finished[id];
            let (expected, expected_reason) = reference_output(prompt, params);
            prop_assert_eq!(&tokens[prompt.len()..], &expected[..], "{}", id);
            prop_assert_eq!(*reason, expected_reason);
        }
        prop_assert_eq!(scheduler.stats().kv_cache_usage, 0.0);
        prop_assert_eq!(scheduler.num_running() + scheduler.num_waiting(), 0);
        // Everything released reaches the runner through the next output.
        let last = scheduler.schedule();
        prop_assert!(last.seqs.is_empty());
        prop_assert_eq!(scheduler.check_invariants(), Ok(()));
    }
}
