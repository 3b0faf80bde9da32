//! A fake paged "model" for scheduler tests: it writes each scheduled token into a simulated
//! KV cache through the block table, reads the whole context back through the block table,
//! and samples a token that is a hash of that context. Any bookkeeping error (wrong blocks,
//! a stale prefix hit, a lost or repeated token) changes the outputs or trips an assertion.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use ember_core::{
    sample, FinishReason, ModelRunnerOutput, Request, RequestHistories, RequestId, RequestUpdate,
    SampleContext, SampledToken, SamplingParams, Scheduler, SchedulerOutput,
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

/// A fake row of logits over the vocabulary for `context`: a hash of it, in [-4, 4).
pub fn fake_logits(context: &[u32]) -> Vec<f32> {
    let base = u64::from(next_token(context)) << 32 | context.len() as u64;
    (0..u64::from(VOCAB))
        .map(|i| {
            let h = (base ^ (i << 8)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((h >> 40) % 800) as f32 / 100.0 - 4.0
        })
        .collect()
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
    /// Set by [`FakeModel::with_real_sampler`]: sample [`fake_logits`] with the real sampler,
    /// keeping token histories the way the model runner does.
    histories: Option<RequestHistories>,
    /// Set by [`FakeModel::with_sliding_window`]: only the last `window` positions of a
    /// context must still be in the cache.
    window: Option<usize>,
}

impl FakeModel {
    /// A model over `num_blocks` blocks of `block_size` slots.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self {
            cache: vec![u32::MAX; num_blocks * block_size],
            block_size,
            tokens: HashMap::new(),
            finished: HashMap::new(),
            histories: None,
            window: None,
        }
    }

    /// The same model attending to the last `window` positions only (`None`: all), so the
    /// scheduler may release blocks before them.
    pub fn with_sliding_window(mut self, window: Option<usize>) -> Self {
        self.window = window;
        self
    }

    /// The same model, sampling with the real sampler (penalties, seeds) over [`fake_logits`].
    pub fn with_real_sampler(mut self) -> Self {
        self.histories = Some(RequestHistories::default());
        self
    }

    /// The token for `context`: the hash, or a real sample when the real sampler is on (checking
    /// that the runner-side history matches the record).
    fn next(&self, seq: &ember_core::ScheduledSeq, context: &[u32]) -> SampledToken {
        let Some(histories) = &self.histories else {
            return SampledToken {
                request_id: seq.request_id.clone(),
                token_id: next_token(context),
                logprob: None,
                rank: None,
                top_logprobs: Vec::new(),
            };
        };
        let history = histories.get(&seq.request_id);
        let params = &seq.sampling_params;
        assert_eq!(
            history.is_some(),
            params.needs_token_history(),
            "{}",
            seq.request_id
        );
        if let Some(history) = history {
            let num_prompt = seq.num_prompt_tokens;
            assert_eq!(
                history.prompt_token_ids(),
                &context[..num_prompt],
                "{}",
                seq.request_id
            );
            for &t in &context[num_prompt..] {
                let count = context[num_prompt..].iter().filter(|&&x| x == t).count() as u32;
                assert_eq!(
                    history.output_count(t),
                    count,
                    "{}: stale history",
                    seq.request_id
                );
            }
        }
        let ctx = SampleContext {
            seed: seq.seed,
            token_index: seq.num_output_tokens,
            history,
            eos_token_ids: &[EOS],
        };
        sample(&mut fake_logits(context), params, &ctx).into_sampled_token(seq.request_id.clone())
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
        if let Some(histories) = self.histories.as_mut() {
            histories.apply_schedule(output);
        }
        let mut sampled = Vec::new();
        let mut total = 0;
        for seq in &output.seqs {
            let known = &self.tokens[&seq.request_id];
            let start = seq.num_computed_tokens;
            let end = start + seq.token_ids.len();
            // Drafts follow the request's known tokens; their slots are written like any other.
            let real_end = end - seq.num_draft_tokens;
            let draft_ids = &seq.token_ids[seq.token_ids.len() - seq.num_draft_tokens..];
            assert!(!seq.token_ids.is_empty(), "{}: empty chunk", seq.request_id);
            assert_eq!(
                &known[start..real_end],
                &seq.token_ids[..seq.token_ids.len() - seq.num_draft_tokens],
                "{}: wrong tokens",
                seq.request_id
            );
            assert_eq!(
                seq.sample,
                real_end == known.len(),
                "{}: wrong sample flag",
                seq.request_id
            );
            assert!(
                draft_ids.is_empty() || (seq.sample && self.histories.is_none()),
                "{}: drafts on a row that is not sampled, or with the real sampler",
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
                // The first token of the chunk reads furthest back. Row i verifies draft i: its
                // context is the known tokens and the drafts before it.
                let first = self.window.map_or(0, |w| (start + 1).saturating_sub(w));
                let mut known_context = known[..real_end].to_vec();
                for i in 0..=draft_ids.len() {
                    let context_end = real_end + i;
                    let context: Vec<u32> = (first..context_end)
                        .map(|pos| {
                            self.cache[seq.block_ids[pos / self.block_size] as usize * self.block_size
                                + pos % self.block_size]
                        })
                        .collect();
                    assert_eq!(
                        &context[..],
                        &known_context[first..],
                        "{}: cache holds the wrong context",
                        seq.request_id
                    );
                    let token = self.next(seq, &known_context);
                    let accepted = draft_ids.get(i) == Some(&token.token_id);
                    sampled.push(token);
                    if !accepted {
                        break;
                    }
                    known_context.push(draft_ids[i]);
                }
            }
        }
        assert_eq!(total, output.num_batched_tokens);
        if let Some(histories) = self.histories.as_mut() {
            histories.record(&sampled);
        }
        ModelRunnerOutput {
            sampled,
            ..Default::default()
        }
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

    /// Every finished request's tokens (prompt and output) by id, sorted by id.
    pub fn sorted_outputs(&self) -> Vec<(String, Vec<u32>)> {
        let mut outs: Vec<(String, Vec<u32>)> = self
            .finished
            .iter()
            .map(|(id, (tokens, _))| (id.to_string(), tokens.clone()))
            .collect();
        outs.sort();
        outs
    }

    /// Moves a request from the live record to the finished one (outputs only).
    pub fn finish(&mut self, id: &RequestId, reason: FinishReason) {
        if let Some(tokens) = self.tokens.remove(id) {
            self.finished.insert(id.clone(), (tokens, reason));
        }
    }

    /// Steps until every request finished, checking the scheduler's invariants after each
    /// step; returns the number of steps.
    pub fn run_to_completion(&mut self, scheduler: &mut Scheduler) -> usize {
        let mut steps = 0;
        while scheduler.has_unfinished_requests() {
            self.step(scheduler);
            scheduler.check_invariants().unwrap();
            steps += 1;
            assert!(steps < 10_000, "no progress");
        }
        steps
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
