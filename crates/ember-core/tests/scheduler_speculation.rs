//! Speculative decoding through the scheduler with the fake model verifying n-gram drafts:
//! outputs equal the reference under preemption, prefix caching, chunked prefill and EOS
//! inside a verified run, drafts are proposed and some accepted, and the cache ends empty.

mod common;

use std::sync::Arc;

use common::{reference_output, FakeModel, EOS};
use ember_core::{Request, SamplingParams, Scheduler, SchedulerConfig, SpeculativeConfig};

fn run(config: SchedulerConfig, ignore_eos: bool) -> Scheduler {
    let mut scheduler = Scheduler::new(config.clone());
    let mut model = FakeModel::new(config.num_blocks, config.block_size);
    let mut added = Vec::new();
    for i in 0..8u32 {
        let prompt: Vec<u32> = (0..12 + i).map(|j| 1 + (j * (i + 1)) % 5).collect();
        let params = SamplingParams {
            max_tokens: Some(40),
            ignore_eos,
            ..Default::default()
        };
        let id: Arc<str> = format!("r{i}").into();
        let request = Request::new(
            id.clone(),
            prompt.clone(),
            Arc::new(params.clone()),
            vec![EOS],
            0,
            0,
            0.0,
        );
        assert!(model.add(&mut scheduler, request));
        added.push((id, prompt, params));
    }
    model.run_to_completion(&mut scheduler);
    for (id, prompt, params) in &added {
        let (tokens, reason) = &model.finished[id];
        let (expected, expected_reason) = reference_output(prompt, params);
        assert_eq!(&tokens[prompt.len()..], &expected[..], "{id}");
        assert_eq!(*reason, expected_reason, "{id}");
    }
    assert_eq!(scheduler.stats().kv_cache_usage, 0.0);
    scheduler
}

fn config(num_blocks: usize, max_num_batched_tokens: usize, adaptive: bool) -> SchedulerConfig {
    SchedulerConfig {
        num_blocks,
        block_size: 4,
        max_num_batched_tokens,
        max_model_len: 128,
        speculative: Some(SpeculativeConfig {
            adaptive,
            max_num_seqs_to_speculate: 0,
            ..SpeculativeConfig::ngram(4, 1, 3)
        }),
        ..SchedulerConfig::default()
    }
}

#[test]
fn verified_drafts_keep_outputs_under_preemption_caching_and_chunking() {
    // 30 blocks of 4 tokens cannot hold eight ~55-token requests: preemption; a budget of 16
    // chunks prompts and cuts drafts short.
    for ignore_eos in [true, false] {
        let stats = run(config(30, 16, false), ignore_eos).stats();
        assert!(stats.num_preemptions > 0, "{stats:?}");
        assert!(stats.num_spec_proposed_tokens > 0, "{stats:?}");
        assert!(stats.num_spec_accepted_tokens > 0, "{stats:?}");
        assert!(stats.num_spec_accepted_tokens <= stats.num_spec_proposed_tokens);
    }
}

#[test]
fn adaptive_speculation_proposes_less_when_drafts_miss() {
    let fixed = run(config(200, 256, false), true).stats();
    let adaptive = run(config(200, 256, true), true).stats();
    assert!(
        adaptive.num_spec_proposed_tokens < fixed.num_spec_proposed_tokens,
        "{adaptive:?} {fixed:?}"
    );
    assert_eq!(fixed.num_generation_tokens, adaptive.num_generation_tokens);
}

#[test]
fn no_drafts_above_the_batch_cap() {
    let capped = SchedulerConfig {
        speculative: Some(SpeculativeConfig {
            max_num_seqs_to_speculate: 4,
            ..SpeculativeConfig::ngram(4, 1, 3)
        }),
        ..config(200, 256, false)
    };
    // All eight run at once from the second step on: more than 4, so nobody proposes.
    assert_eq!(run(capped, true).stats().num_spec_proposed_tokens, 0);
}
