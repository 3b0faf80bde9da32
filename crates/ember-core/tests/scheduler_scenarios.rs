//! Deterministic scheduler scenarios: chunked prefill, prefix caching, preemption,
//! priorities, aborts and request validation.

mod common;

use std::sync::Arc;

use common::{reference_output, request, FakeModel};
use ember_core::{
    AddRequestError, FinishReason, Request, SamplingParams, Scheduler, SchedulerConfig, SchedulingPolicy,
};

fn config(num_blocks: usize, block_size: usize, max_num_batched_tokens: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens,
        max_model_len: 256,
        block_size,
        num_blocks,
        enable_prefix_caching: true,
        long_prefill_token_threshold: 0,
        policy: SchedulingPolicy::Fcfs,
        sliding_window: None,
        max_loras: None,
        speculative: None,
    }
}

#[test]
fn chunked_prefill_shares_steps_with_a_decoding_request() {
    let mut scheduler = Scheduler::new(config(64, 16, 32));
    let mut model = FakeModel::new(64, 16);
    assert!(model.add(&mut scheduler, request("a", vec![1, 2, 3, 4], 50, true, 0)));
    model.step(&mut scheduler); // a's prefill
    assert!(model.add(
        &mut scheduler,
        request("b", (0..100).map(|i| i % 7 + 1).collect(), 4, true, 0)
    ));
    let mut chunks = Vec::new();
    for _ in 0..4 {
        let (output, _) = model.step(&mut scheduler);
        scheduler.check_invariants().unwrap();
        assert_eq!(output.seqs[0].request_id.as_ref(), "a");
        assert_eq!(output.seqs[0].token_ids.len(), 1, "a decodes every step");
        assert!(output.num_batched_tokens <= 32);
        let b = &output.seqs[1];
        chunks.push((b.token_ids.len(), b.sample));
    }
    assert_eq!(chunks, vec![(31, false), (31, false), (31, false), (7, true)]);
    assert_eq!(scheduler.request("b").unwrap().num_output_tokens(), 1);
    model.run_to_completion(&mut scheduler);
    assert_eq!(scheduler.kv_cache().usage(), 0.0);
}

#[test]
fn long_prefill_threshold_limits_chunks() {
    let mut cfg = config(64, 4, 64);
    cfg.long_prefill_token_threshold = 10;
    let mut scheduler = Scheduler::new(cfg);
    let mut model = FakeModel::new(64, 4);
    assert!(model.add(&mut scheduler, request("a", (1..=25).collect(), 2, true, 0)));
    let sizes: Vec<usize> = (0..3)
        .map(|_| model.step(&mut scheduler).0.seqs[0].token_ids.len())
        .collect();
    assert_eq!(sizes, vec![10, 10, 5]);
}

#[test]
fn second_request_hits_the_prefix_cache() {
    let mut scheduler = Scheduler::new(config(64, 4, 256));
    let mut model = FakeModel::new(64, 4);
    let shared: Vec<u32> = (1..=22).collect();
    assert!(model.add(&mut scheduler, request("a", shared.clone(), 10, true, 0)));
    model.step(&mut scheduler);
    model.step(&mut scheduler);
    let mut prompt_b = shared[..18].to_vec();
    prompt_b.extend([9, 9, 9]);
    assert!(model.add(&mut scheduler, request("b", prompt_b, 3, true, 0)));
    let (output, updates) = model.step(&mut scheduler);
    let b = output.seqs.iter().find(|s| s.request_id.as_ref() == "b").unwrap();
    assert_eq!(b.num_computed_tokens, 16, "4 full blocks of 4 shared tokens");
    assert_eq!(b.token_ids.len(), 5);
    let update = updates.iter().find(|u| u.request_id.as_ref() == "b").unwrap();
    assert_eq!(update.num_cached_tokens, 16);
    assert_eq!(
        &scheduler.kv_cache().block_ids("b")[..4],
        &scheduler.kv_cache().block_ids("a")[..4]
    );
    scheduler.check_invariants().unwrap();
    model.run_to_completion(&mut scheduler);
    // After both finished their blocks stay cached: a third request still hits.
    assert!(model.add(&mut scheduler, request("c", shared.clone(), 2, true, 0)));
    let (output, _) = model.step(&mut scheduler);
    assert_eq!(output.seqs[0].num_computed_tokens, 20);
    let stats = scheduler.stats();
    assert_eq!(stats.prefix_cache_hits, 36);
    assert!(stats.prefix_cache_hit_rate() > 0.0);
    model.run_to_completion(&mut scheduler);
    assert_eq!(model.finished["c"].0[22..], model.finished["a"].0[22..24]);
    assert_eq!(scheduler.stats().kv_cache_usage, 0.0);
}

fn outputs_with_blocks(num_blocks: usize) -> (Vec<(String, Vec<u32>)>, u64) {
    let mut scheduler = Scheduler::new(config(num_blocks, 2, 16));
    let mut model = FakeModel::new(num_blocks, 2);
    for i in 0..8u32 {
        let prompt: Vec<u32> = (0..6 + i % 4).map(|j| (i * 7 + j) % 15 + 1).collect();
        assert!(model.add(&mut scheduler, request(&format!("r{i}"), prompt, 12, true, 0)));
    }
    model.run_to_completion(&mut scheduler);
    assert_eq!(scheduler.stats().kv_cache_usage, 0.0);
    (model.sorted_outputs(), scheduler.stats().num_preemptions)
}

#[test]
fn preemption_does_not_change_outputs() {
    let (roomy, roomy_preemptions) = outputs_with_blocks(200);
    let (tight, tight_preemptions) = outputs_with_blocks(12);
    assert_eq!(roomy_preemptions, 0);
    assert!(tight_preemptions > 0);
    assert_eq!(roomy, tight);
    for (_, tokens) in &roomy {
        assert!(tokens.len() >= 18);
    }
}

#[test]
fn outputs_match_the_reference_with_eos() {
    let mut scheduler = Scheduler::new(config(10, 2, 8));
    let mut model = FakeModel::new(10, 2);
    let mut expected = Vec::new();
    for i in 0..10u32 {
        let prompt: Vec<u32> = (0..3 + i % 3).map(|j| (i * 5 + j * 3) % 15 + 1).collect();
        let req = request(&format!("r{i}"), prompt.clone(), 6, false, 0);
        expected.push((
            req.request_id.clone(),
            prompt.clone(),
            reference_output(&prompt, &req.sampling_params),
        ));
        assert!(model.add(&mut scheduler, req));
    }
    model.run_to_completion(&mut scheduler);
    for (id, prompt, (out, reason)) in expected {
        let (tokens, got_reason) = &model.finished[&id];
        assert_eq!(&tokens[prompt.len()..], &out[..], "{id}");
        assert_eq!(*got_reason, reason, "{id}");
    }
}

#[test]
fn lowest_priority_newest_request_is_preempted() {
    let mut cfg = config(6, 2, 64);
    cfg.policy = SchedulingPolicy::Priority;
    let mut scheduler = Scheduler::new(cfg);
    let mut model = FakeModel::new(6, 2);
    // Each prompt fills 2 blocks exactly; the first decode needs a third block each.
    assert!(model.add(&mut scheduler, request("low", vec![1, 2, 3, 4], 5, true, 5)));
    assert!(model.add(&mut scheduler, request("high", vec![5, 6, 7, 8], 5, true, 0)));
    assert!(model.add(&mut scheduler, request("mid", vec![9, 10, 11, 12], 5, true, 1)));
    let (output, _) = model.step(&mut scheduler);
    let order: Vec<&str> = output.seqs.iter().map(|s| s.request_id.as_ref()).collect();
    assert_eq!(order, vec!["high", "mid", "low"]);
    let (output, _) = model.step(&mut scheduler);
    assert_eq!(scheduler.stats().num_preemptions, 1);
    assert_eq!(
        output.released_ids.iter().map(|r| r.as_ref()).collect::<Vec<_>>(),
        vec!["low"]
    );
    assert_eq!(output.seqs.len(), 2);
    assert!(output.seqs.iter().all(|s| s.request_id.as_ref() != "low"));
    assert_eq!(scheduler.request("low").unwrap().num_computed_tokens, 0);
    assert_eq!(
        scheduler.request("low").unwrap().num_output_tokens(),
        1,
        "keeps its output"
    );
    model.run_to_completion(&mut scheduler);
    assert_eq!(model.finished["low"].0.len(), 9);
}

#[test]
fn finish_request_frees_waiting_and_running_requests() {
    let mut scheduler = Scheduler::new(config(16, 4, 8));
    let mut model = FakeModel::new(16, 4);
    assert!(model.add(&mut scheduler, request("a", vec![1; 6], 10, true, 0)));
    assert!(model.add(&mut scheduler, request("b", vec![2; 6], 10, true, 0)));
    model.step(&mut scheduler);
    assert_eq!((scheduler.num_running(), scheduler.num_waiting()), (2, 0));
    let update = scheduler.finish_request("b", FinishReason::Abort).unwrap();
    assert_eq!(update.finish_reason, Some(FinishReason::Abort));
    assert!(scheduler.finish_request("b", FinishReason::Abort).is_none());
    scheduler.check_invariants().unwrap();
    assert!(model.add(&mut scheduler, request("c", vec![3; 6], 10, true, 0)));
    assert!(scheduler.finish_request("c", FinishReason::Abort).is_some());
    scheduler.check_invariants().unwrap();
    let output = scheduler.schedule();
    assert_eq!(
        output.released_ids.iter().map(|r| r.as_ref()).collect::<Vec<_>>(),
        vec!["b"]
    );
    scheduler.finish_request("a", FinishReason::Stop);
    // Tokens of a request finished between schedule() and update() are dropped.
    let runner = model.execute(&output);
    assert!(scheduler.update(&output, &runner).is_empty());
    assert!(!scheduler.has_unfinished_requests());
    assert_eq!(scheduler.stats().kv_cache_usage, 0.0);
    scheduler.check_invariants().unwrap();
}

#[test]
fn stop_conditions() {
    let mut scheduler = Scheduler::new(config(32, 4, 64));
    let mut model = FakeModel::new(32, 4);
    let prompt = vec![3, 1, 4, 1, 5];
    let (reference, _) = reference_output(
        &prompt,
        &SamplingParams {
            max_tokens: Some(8),
            ignore_eos: true,
            ..Default::default()
        },
    );
    // Stop on the third reference token via stop_token_ids, with min_tokens below it.
    let stop_token = reference[2];
    let first = reference.iter().position(|&t| t == stop_token).unwrap();
    let params = SamplingParams {
        max_tokens: Some(8),
        ignore_eos: true,
        stop_token_ids: vec![stop_token],
        ..Default::default()
    };
    let req = Request::new("s", prompt.clone(), Arc::new(params), vec![], 0, 0, 0.0);
    assert!(model.add(&mut scheduler, req));
    let mut last = None;
    while scheduler.has_unfinished_requests() {
        let (_, updates) = model.step(&mut scheduler);
        if let Some(u) = updates.into_iter().find(|u| u.finish_reason.is_some()) {
            last = Some(u);
        }
    }
    let last = last.unwrap();
    assert_eq!(last.finish_reason, Some(FinishReason::Stop));
    assert_eq!(last.stop_token_id, Some(stop_token));
    assert_eq!(model.finished["s"].0.len(), prompt.len() + first + 1);
    // max_model_len ends a request with no max_tokens.
    let mut cfg = config(32, 4, 64);
    cfg.max_model_len = 9;
    let mut scheduler = Scheduler::new(cfg);
    let params = SamplingParams {
        max_tokens: None,
        ignore_eos: true,
        ..Default::default()
    };
    let req = Request::new("m", prompt.clone(), Arc::new(params), vec![], 0, 0, 0.0);
    assert!(model.add(&mut scheduler, req));
    model.run_to_completion(&mut scheduler);
    assert_eq!(
        model.finished["m"],
        (model.finished["m"].0.clone(), FinishReason::Length)
    );
    assert_eq!(model.finished["m"].0.len(), 9);
}

#[test]
fn bad_requests_are_refused_with_numbers() {
    let mut cfg = config(8, 4, 64);
    cfg.max_model_len = 64;
    let mut scheduler = Scheduler::new(cfg);
    let err = scheduler
        .add_request(request("e", vec![], 4, false, 0))
        .unwrap_err();
    assert_eq!(err, AddRequestError::EmptyPrompt);
    let err = scheduler
        .add_request(request("l", vec![1; 60], 10, false, 0))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("70 in all, more than max_model_len (64)"),
        "{err}"
    );
    let err = scheduler
        .add_request(request("k", vec![1; 30], 10, false, 0))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("needs 10 KV-cache blocks of 4 tokens, more than the cache holds (8)"),
        "{err}"
    );
    let params = SamplingParams {
        max_tokens: None,
        ..Default::default()
    };
    let req = Request::new("n", vec![1; 64], Arc::new(params), vec![], 0, 0, 0.0);
    let err = scheduler.add_request(req).unwrap_err();
    assert!(
        err.to_string()
            .contains("prompt has 64 tokens, max_model_len (64)"),
        "{err}"
    );
    let params = SamplingParams {
        top_p: 0.0,
        ..Default::default()
    };
    let req = Request::new("p", vec![1], Arc::new(params), vec![], 0, 0, 0.0);
    assert!(matches!(
        scheduler.add_request(req),
        Err(AddRequestError::InvalidParams(_))
    ));
    scheduler
        .add_request(request("d", vec![1; 4], 4, false, 0))
        .unwrap();
    let err = scheduler
        .add_request(request("d", vec![1; 4], 4, false, 0))
        .unwrap_err();
    assert_eq!(err, AddRequestError::DuplicateId("d".into()));
    assert_eq!(scheduler.num_waiting(), 1);
    assert!(Scheduler::try_new(SchedulerConfig {
        max_num_seqs: 0,
        ..Default::default()
    })
    .is_err());
}

#[test]
fn max_num_seqs_caps_the_batch() {
    let mut cfg = config(64, 4, 64);
    cfg.max_num_seqs = 2;
    let mut scheduler = Scheduler::new(cfg);
    let mut model = FakeModel::new(64, 4);
    for i in 0..5 {
        assert!(model.add(
            &mut scheduler,
            request(&format!("r{i}"), vec![1, 2, 3], 3, true, 0)
        ));
    }
    let (output, _) = model.step(&mut scheduler);
    assert_eq!(output.seqs.len(), 2);
    assert_eq!(scheduler.num_waiting(), 3);
    model.run_to_completion(&mut scheduler);
    assert_eq!(model.finished.len(), 5);
    assert_eq!(scheduler.stats().num_generation_tokens, 15);
    assert_eq!(scheduler.stats().num_prompt_tokens, 15);
}

#[test]
fn priority_policy_admits_by_priority_then_arrival() {
    let mut cfg = config(64, 4, 64);
    cfg.max_num_seqs = 1;
    cfg.policy = SchedulingPolicy::Priority;
    let mut scheduler = Scheduler::new(cfg);
    let mut model = FakeModel::new(64, 4);
    for (id, priority) in [("p2", 2), ("p0-first", 0), ("p1", 1), ("p0-second", 0)] {
        assert!(model.add(&mut scheduler, request(id, vec![1, 2, 3], 2, true, priority)));
    }
    let mut order = Vec::new();
    while scheduler.has_unfinished_requests() {
        let (output, _) = model.step(&mut scheduler);
        for seq in &output.seqs {
            if seq.num_computed_tokens == 0 {
                order.push(seq.request_id.to_string());
            }
        }
    }
    assert_eq!(order, vec!["p0-first", "p0-second", "p1", "p2"]);
}

#[test]
fn scheduler_can_move_between_threads() {
    fn assert_send<T: Send + Sync>() {}
    assert_send::<Scheduler>();
    assert_send::<ember_core::KvCacheManager>();
}

/// `n` completions of one prompt: the first computes the prompt, the others fork from it.
fn forked_family(prompt: &[u32], n: usize) -> Vec<Request> {
    (0..n)
        .map(|i| {
            let fork_of = (i > 0).then(|| Arc::from("c0"));
            request(&format!("c{i}"), prompt.to_vec(), 6, true, 0).with_fork_of(fork_of)
        })
        .collect()
}

#[test]
fn forks_share_the_prompt_blocks_instead_of_recomputing_them() {
    for enable_prefix_caching in [true, false] {
        let mut cfg = config(64, 4, 16);
        cfg.enable_prefix_caching = enable_prefix_caching;
        let mut scheduler = Scheduler::new(cfg);
        let mut model = FakeModel::new(64, 4);
        let prompt: Vec<u32> = (1..=30).collect();
        for r in forked_family(&prompt, 3) {
            assert!(model.add(&mut scheduler, r));
        }
        // The 30-token prompt takes two chunks of the 16-token budget; the forks wait meanwhile.
        let first = model.step(&mut scheduler).0;
        assert_eq!(first.seqs.len(), 1);
        assert_eq!(first.seqs[0].request_id.as_ref(), "c0");
        let second = model.step(&mut scheduler).0;
        assert_eq!(second.seqs.len(), 1, "forks wait for the prompt");
        // Then each fork computes only its last partial block: (30 - 1) / 4 = 7 full blocks shared.
        let third = model.step(&mut scheduler).0;
        let fork_chunks: Vec<(usize, usize)> = third.seqs[1..]
            .iter()
            .map(|s| (s.num_computed_tokens, s.token_ids.len()))
            .collect();
        assert_eq!(fork_chunks, vec![(28, 2), (28, 2)]);
        let c0_blocks = scheduler.kv_cache().block_ids("c0")[..7].to_vec();
        for fork in ["c1", "c2"] {
            assert_eq!(scheduler.kv_cache().block_ids(fork)[..7], c0_blocks[..]);
            assert_eq!(scheduler.request(fork).unwrap().num_cached_tokens, 28);
        }
        scheduler.check_invariants().unwrap();
        assert_eq!(scheduler.stats().num_forked_tokens, 56);
        assert_eq!(scheduler.stats().num_prompt_tokens, 30 + 2 + 2);
        model.run_to_completion(&mut scheduler);
        let (expected, _) = reference_output(
            &prompt,
            &SamplingParams {
                max_tokens: Some(6),
                ignore_eos: true,
                ..Default::default()
            },
        );
        for i in 0..3 {
            let tokens = &model.finished[&Arc::from(format!("c{i}"))].0;
            assert_eq!(tokens[prompt.len()..], expected[..], "c{i}");
        }
        assert_eq!(scheduler.kv_cache().usage(), 0.0);
    }
}

#[test]
fn a_fork_whose_sibling_is_gone_computes_its_own_prompt() {
    let mut scheduler = Scheduler::new(config(64, 4, 64));
    let mut model = FakeModel::new(64, 4);
    let prompt: Vec<u32> = (1..=10).collect();
    let family = forked_family(&prompt, 2);
    // Only the fork arrives (its sibling was rejected or aborted): no waiting, no sharing.
    assert!(model.add(&mut scheduler, family.into_iter().nth(1).unwrap()));
    let step = model.step(&mut scheduler).0;
    assert_eq!(step.seqs[0].token_ids.len(), 10);
    model.run_to_completion(&mut scheduler);
    assert_eq!(scheduler.stats().num_forked_tokens, 0);
}

#[test]
fn a_fork_with_a_different_prompt_shares_nothing() {
    let mut scheduler = Scheduler::new(config(64, 4, 64));
    let mut model = FakeModel::new(64, 4);
    assert!(model.add(&mut scheduler, request("c0", (1..=12).collect(), 3, true, 0)));
    model.step(&mut scheduler);
    let other = request("c1", (2..=13).collect(), 3, true, 0).with_fork_of(Some(Arc::from("c0")));
    assert!(model.add(&mut scheduler, other));
    let step = model.step(&mut scheduler).0;
    assert_eq!(step.seqs[1].token_ids.len(), 12);
    model.run_to_completion(&mut scheduler);
}

#[test]
fn max_loras_caps_the_distinct_adapters_running() {
    let mut scheduler = Scheduler::new(SchedulerConfig {
        max_loras: Some(2),
        ..config(64, 16, 256)
    });
    let mut model = FakeModel::new(64, 16);
    for (id, lora) in [
        ("a", Some(1)),
        ("b", Some(2)),
        ("c", Some(3)),
        ("d", None),
        ("e", Some(1)),
    ] {
        let req = request(id, vec![1, 2, 3], 4, true, 0).with_lora_id(lora);
        assert!(model.add(&mut scheduler, req));
    }
    let (output, _) = model.step(&mut scheduler);
    let first: Vec<(&str, Option<u32>)> = output
        .seqs
        .iter()
        .map(|s| (s.request_id.as_ref(), s.lora_id))
        .collect();
    // "c" (a third adapter) waits at the head of the queue, holding back the others (first come, first served).
    assert_eq!(first, [("a", Some(1)), ("b", Some(2))]);
    let mut steps = 0;
    while scheduler.has_unfinished_requests() {
        let (output, _) = model.step(&mut scheduler);
        let mut adapters: Vec<u32> = output.seqs.iter().filter_map(|s| s.lora_id).collect();
        adapters.sort_unstable();
        adapters.dedup();
        assert!(adapters.len() <= 2, "{adapters:?}");
        steps += 1;
        assert!(steps < 100);
    }
}
