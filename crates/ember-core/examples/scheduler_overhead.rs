//! Times the scheduler's bookkeeping per step (`schedule()` + `update()`, no model) with
//! 256 and 1024 decoding requests.
//!
//! Run: `cargo run -p ember-core --release --example scheduler_overhead`

use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::{
    ModelRunnerOutput, Request, SampledToken, SamplingParams, Scheduler, SchedulerConfig, SchedulingPolicy,
};

const PROMPT_LEN: usize = 128;
const DECODE_STEPS: usize = 300;

/// Fills the batch, then times `DECODE_STEPS` decode steps; returns (schedule, update) per step.
fn measure(num_requests: usize, enable_prefix_caching: bool) -> (Duration, Duration) {
    let block_size = 16;
    let max_model_len = PROMPT_LEN + DECODE_STEPS + 64;
    let mut scheduler = Scheduler::new(SchedulerConfig {
        max_num_seqs: num_requests,
        max_num_batched_tokens: 8192,
        max_model_len,
        block_size,
        num_blocks: num_requests * max_model_len.div_ceil(block_size),
        enable_prefix_caching,
        long_prefill_token_threshold: 0,
        policy: SchedulingPolicy::Fcfs,
        sliding_window: None,
        max_loras: None,
        speculative: None,
    });
    let params = Arc::new(SamplingParams {
        max_tokens: Some(DECODE_STEPS + 32),
        ignore_eos: true,
        ..Default::default()
    });
    for i in 0..num_requests {
        let prompt: Vec<u32> = (0..PROMPT_LEN as u32).map(|t| t * 31 + i as u32).collect();
        let request = Request::new(
            format!("req-{i}"),
            prompt,
            params.clone(),
            vec![2],
            i as u64,
            0,
            i as f64,
        );
        if let Err(err) = scheduler.add_request(request) {
            panic!("benchmark request refused: {err}");
        }
    }
    let run = |scheduler: &mut Scheduler| -> (Duration, Duration) {
        let t0 = Instant::now();
        let output = scheduler.schedule();
        let t1 = Instant::now();
        let sampled = output
            .seqs
            .iter()
            .filter(|s| s.sample)
            .map(|s| SampledToken {
                request_id: s.request_id.clone(),
                token_id: 1000 + (s.num_output_tokens as u32 % 7),
                logprob: None,
                rank: None,
                top_logprobs: Vec::new(),
            })
            .collect();
        let runner_output = ModelRunnerOutput {
            sampled,
            ..Default::default()
        };
        let t2 = Instant::now();
        scheduler.update(&output, &runner_output);
        (t1 - t0, Instant::now() - t2)
    };
    while scheduler.num_waiting() > 0 || scheduler.stats().num_generation_tokens < num_requests as u64 {
        run(&mut scheduler);
    }
    let (mut schedule_time, mut update_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..DECODE_STEPS {
        let (s, u) = run(&mut scheduler);
        schedule_time += s;
        update_time += u;
    }
    assert_eq!(scheduler.num_running(), num_requests);
    (
        schedule_time / DECODE_STEPS as u32,
        update_time / DECODE_STEPS as u32,
    )
}

fn main() {
    println!(
        "{:>9} {:>14} {:>13} {:>11} {:>11} {:>12}",
        "requests", "prefix_cache", "schedule_us", "update_us", "total_us", "us_per_seq"
    );
    for num_requests in [256, 1024] {
        for caching in [false, true] {
            let (s, u) = measure(num_requests, caching);
            let total = (s + u).as_secs_f64() * 1e6;
            println!(
                "{:>9} {:>14} {:>13.1} {:>11.1} {:>11.1} {:>12.3}",
                num_requests,
                caching,
                s.as_secs_f64() * 1e6,
                u.as_secs_f64() * 1e6,
                total,
                total / num_requests as f64
            );
        }
    }
}
