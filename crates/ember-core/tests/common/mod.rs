//! A fake paged "model" for scheduler tests: it writes each scheduled token into a simulated
//! KV cache through the block table, reads the whole context back through the block table,
//! and samples a token that is a hash of that context. Any bookkeeping error (wrong blocks,
//! a stale prefix hit, a lost or repeated token) changes the outputs or trips an assertion.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use ember_core::{
    FinishReason, ModelRunnerOutput, Request, RequestId, RequestUpdate, SampledToken, SamplingParams,
    Scheduler, SchedulerOutput,
};

/// End-of-sequence token of the fake model.
pub const EOS: u32 = 0;

/// Tokens the fake model picks from.
pub const VOCAB: u32 = 16;

/// The fake model's next token after `context`.
pub fn next_token(context: &[u32]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in context {
        h ^= u64::from(t) + 1;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    (h % u64::from(VOCAB)) as u32
}

/// Tokens a request generates when nothing interferes: the reference outputs.
pub fn reference_output(prompt: &[u32], params: &SamplingParams) -> (Vec<u32>, FinishReason) {
    let mut context = prompt.to_vec();
    let mut out = Vec::new();
    let max_tokens = params.max_tokens.unwrap_or(usize::MAX);
    loop {
        let t = next_token(&context);
        context.push(t);
        out.push(t);
        if !params.ignore_eos && t == EOS && out.len() > params.min_tokens {
            return (out, FinishReason::Stop);
        }
        if out.len() >= max_tokens {
            return (out, FinishReason::Length);
        }
    }
}

/// Simulated KV cache plus the harness's record of every live request's tokens.
pub struct FakeModel {
    cache: Vec<u32>,
    block_size: usize,
    /// Prompt plus outputs so far, per live request.
    pub tokens: HashMap<RequestId, Vec<u32>>,
    /// Outputs of finished requests and why they finished.
    pub finished: HashMap<RequestId, (Vec<u32>, FinishReason)>,
}

impl FakeModel {
    /// A model over `num_blocks` blocks of `block_size` slots.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self {
            cache: vec![u32::MAX; num_blocks * block_size],
            block_size,
            tokens: HashMap::new(),
            finished: HashMap::new(),
        }
    }

    /// Adds a request to the scheduler and, when accepted, to the record.
    pub fn add(&mut self, scheduler: &mut Scheduler, request: Request) -> bool {
        let id = request.request_id.clone();
        let prompt = request.prompt_token_ids.clone();
        match scheduler.add_request(request) {
            Ok(()) => {
                self.tokens.insert(id, prompt);
                true
            }
            Err(_) => false,
        }
    }

    /// Runs one scheduled step, checking every sequence against the record.
    pub fn execute(&mut self, output: &SchedulerOutput) -> ModelRunnerOutput {
        let mut sampled = Vec::new();
        let mut total = 0;
        for seq in &output.seqs {
            let known = &self.tokens[&seq.request_id];
            let start = seq.num_computed_tokens;
            let end = start + seq.token_ids.len();
            assert!(!seq.token_ids.is_empty(), "{}: empty chunk", seq.request_id);
            assert_eq!(
                &known[start..end],
                &seq.token_ids[..],
                "{}: wrong tokens",
                seq.request_id
            );
            assert_eq!(
                seq.sample,
                end == known.len(),
                "{}: wrong sample flag",
                seq.request_id
            );
            assert!(
                seq.block_ids.len() * self.block_size >= end,
                "{}: too few blocks",
                seq.request_id
            );
            for (j, &t) in seq.token_ids.iter().enumerate() {
                let pos = start + j;
                let slot =
                    seq.block_ids[pos / self.block_size] as usize * self.block_size + pos % self.block_size;
                self.cache[slot] = t;
            }
            total += seq.token_ids.len();
            if seq.sample {
                let context: Vec<u32> = (0..end)
                    .map(|pos| {
                        self.cache[seq.block_ids[pos / self.block_size] as usize * self.block_size
                            + pos % self.block_size]
                    })
                    .collect();
                assert_eq!(
                    &context[..],
                    &known[..end],
                    "{}: cache holds the wrong context",
                    seq.request_id
                );
                sampled.push(SampledToken {
                    request_id: seq.request_id.clone(),
                    token_id: next_token(&context),
                    logprob: 0.0,
                    top_logprobs: Vec::new(),
                });
            }
        }
        assert_eq!(total, output.num_batched_tokens);
        ModelRunnerOutput { sampled }
    }

    /// Applies the scheduler's updates to the record.
    pub fn apply(&mut self, updates: &[RequestUpdate]) {
        for update in updates {
            let tokens = self
                .tokens
                .get_mut(&update.request_id)
                .expect("update for an unknown request");
            tokens.extend(update.new_tokens.iter().map(|t| t.token_id));
            if let Some(reason) = update.finish_reason {
                self.finish(&update.request_id, reason);
            }
        }
    }

    /// Moves a request from the live record to the finished one (outputs only).
    pub fn finish(&mut self, id: &RequestId, reason: FinishReason) {
        if let Some(tokens) = self.tokens.remove(id) {
            self.finished.insert(id.clone(), (tokens, reason));
        }
    }

    /// One full step; returns the updates.
    pub fn step(&mut self, scheduler: &mut Scheduler) -> (SchedulerOutput, Vec<RequestUpdate>) {
        let output = scheduler.schedule();
        let runner_output = self.execute(&output);
        let updates = scheduler.update(&output, &runner_output);
        self.apply(&updates);
        (output, updates)
    }
}

/// A request with default sampling except the given fields.
pub fn request(id: &str, prompt: Vec<u32>, max_tokens: usize, ignore_eos: bool, priority: i32) -> Request {
    let params = SamplingParams {
        max_tokens: Some(max_tokens),
        ignore_eos,
        ..Default::default()
    };
    Request::new(id, prompt, Arc::new(params), vec![EOS], 0, priority, 0.0)
}
