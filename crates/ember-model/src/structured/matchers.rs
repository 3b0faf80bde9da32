//! Every constrained request's llguidance matcher, keyed by request id. Compiled when the
//! request is added, or taken from the [`GrammarCompiler`]'s cache when the caller compiled it
//! already (a grammar that does not compile is an [`InvalidParam`], never unconstrained output), asked for a mask before each sampled step, fed every sampled token.
//! State lives here and only here, so it survives preemption (recompute keeps the generated
//! tokens, so the matcher's position stays right) and is dropped when the request ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ember_core::{FinishReason, InvalidParam, RequestId, RequestUpdate, SchedulerOutput, TokenMask};
use llguidance::Matcher;
use rayon::prelude::*;

use super::compiler::GrammarCompiler;
use crate::text::tokenizer::Tokenizer;

/// One request's matcher.
struct RequestMatcher {
    matcher: Matcher,
    /// Set when computing a mask failed: the request ends at its next update.
    failed: Option<String>,
    /// Token ids that end the request besides EOS (never jumped over), when jump-forward is on.
    jump_forward: Option<Vec<u32>>,
    /// The mask of the matcher's current state, when jump-forward already computed it.
    next_mask: Option<Arc<TokenMask>>,
}

/// The compiler and the per-request matchers of one engine.
pub struct StructuredOutputs {
    compiler: GrammarCompiler,
    vocab_size: usize,
    eos_token_ids: Vec<u32>,
    requests: HashMap<RequestId, RequestMatcher>,
    num_masks: u64,
    mask_s: f64,
}

impl StructuredOutputs {
    /// No requests yet; masks have `vocab_size` entries (the logits row), and where a grammar
    /// accepts, every id of `eos_token_ids` is allowed.
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize, mut eos_token_ids: Vec<u32>) -> Self {
        if eos_token_ids.is_empty() {
            eos_token_ids.extend(tokenizer.eos_token_id());
        }
        Self {
            compiler: GrammarCompiler::new(tokenizer, vocab_size, eos_token_ids.first().copied()),
            vocab_size,
            eos_token_ids,
            requests: HashMap::new(),
            num_masks: 0,
            mask_s: 0.0,
        }
    }

    /// The compiler whose cache this engine's `add` reads: clone it to compile on a caller's
    /// thread before the request reaches the engine loop.
    pub fn compiler(&self) -> &GrammarCompiler {
        &self.compiler
    }

    /// Compiles `spec` for `request_id` (replacing any matcher it had). `jump_forward` holds
    /// the request's stop token ids when forced tokens may be appended without sampling (see
    /// [`StructuredOutputs::take_forced_tokens`]), `None` when they may not.
    pub fn add(
        &mut self,
        request_id: &RequestId,
        spec: &Arc<ember_core::StructuredOutputs>,
        jump_forward: Option<Vec<u32>>,
    ) -> Result<(), InvalidParam> {
        let matcher = self.compiler.compile(spec)?;
        self.requests.insert(
            request_id.clone(),
            RequestMatcher {
                matcher,
                failed: None,
                jump_forward,
                next_mask: None,
            },
        );
        Ok(())
    }

    /// Forgets a request (finished, aborted or failed); unknown ids are ignored.
    pub fn remove(&mut self, request_id: &str) {
        self.requests.remove(request_id);
    }

    /// True when `request_id` is constrained.
    pub fn contains(&self, request_id: &str) -> bool {
        self.requests.contains_key(request_id)
    }

    /// Number of constrained requests alive.
    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }

    /// Sets the token mask of every sampled, constrained sequence of `output` (in parallel).
    /// A matcher that fails to give a mask allows only EOS and ends its request at the update.
    /// A drafting sequence keeps the drafts its grammar accepts in a row (up to the first EOS)
    /// and gets one mask per row: the state after the drafts before it (the matcher is moved
    /// through them and rolled back), so every row samples exactly as plain decoding would.
    pub fn fill_masks(&mut self, output: &mut SchedulerOutput) {
        if self.requests.is_empty() {
            return;
        }
        let start = Instant::now();
        let wanted: HashMap<&str, &[u32]> = output
            .seqs
            .iter()
            .filter(|s| s.sample)
            .map(|s| {
                (
                    &*s.request_id,
                    &s.token_ids[s.token_ids.len() - s.num_draft_tokens..],
                )
            })
            .collect();
        let eos_token_ids = &self.eos_token_ids;
        let vocab_size = self.vocab_size;
        let mut work: Vec<(&RequestId, &mut RequestMatcher, &[u32])> = self
            .requests
            .iter_mut()
            .filter_map(|(id, state)| wanted.get(&**id).map(|drafts| (id, state, *drafts)))
            .collect();
        let masks: HashMap<RequestId, Vec<Arc<TokenMask>>> = work
            .par_iter_mut()
            .map(|(id, state, drafts)| {
                let first = match state.next_mask.take() {
                    Some(mask) => mask,
                    None => Arc::new(checked_mask(id, state, vocab_size, eos_token_ids)),
                };
                let mut row_masks = vec![first];
                if !drafts.is_empty() && state.failed.is_none() {
                    draft_masks(id, state, drafts, vocab_size, eos_token_ids, &mut row_masks);
                }
                ((*id).clone(), row_masks)
            })
            .collect();
        drop(wanted);
        self.num_masks += masks.values().map(|m| m.len() as u64).sum::<u64>();
        self.mask_s += start.elapsed().as_secs_f64();
        for seq in output.seqs.iter_mut().filter(|s| s.sample) {
            let Some(row_masks) = masks.get(&seq.request_id) else {
                continue;
            };
            let num_kept = row_masks.len() - 1;
            let num_dropped = seq.num_draft_tokens - num_kept;
            seq.token_ids.truncate(seq.token_ids.len() - num_dropped);
            seq.num_draft_tokens = num_kept;
            output.num_batched_tokens -= num_dropped;
            seq.token_mask = Some(Arc::clone(&row_masks[0]));
            seq.draft_token_masks = row_masks[1..].to_vec();
        }
    }

    /// (masks computed, their wall time in seconds) since the engine started.
    pub fn mask_counters(&self) -> (u64, f64) {
        (self.num_masks, self.mask_s)
    }

    /// Feeds the tokens a constrained request gained this step to its matcher. Returns the
    /// reason to end the request now: `Stop` when the grammar is complete (nothing more may
    /// follow) or EOS came; `Abort` when the matcher failed or refused a token (the refused
    /// token and the rest are removed from `update`, so no unconstrained text is returned).
    pub fn accept(&mut self, update: &mut RequestUpdate) -> Option<FinishReason> {
        let state = self.requests.get_mut(&update.request_id)?;
        state.next_mask = None;
        if let Some(error) = &state.failed {
            log::error!(
                "ending request {}: structured output failed: {error}",
                update.request_id
            );
            update.new_tokens.clear();
            return Some(FinishReason::Abort);
        }
        for (index, token) in update.new_tokens.iter().enumerate() {
            if self.eos_token_ids.contains(&token.token_id) {
                update.new_tokens.truncate(index + 1);
                return Some(FinishReason::Stop);
            }
            match state.matcher.try_consume_tokens(&[token.token_id]) {
                Ok(1) => {}
                refused => {
                    let accepting = state.matcher.is_accepting().unwrap_or(false);
                    log::warn!(
                        "request {}: the grammar refused token {} ({refused:?})",
                        update.request_id,
                        token.token_id
                    );
                    update.new_tokens.truncate(index);
                    return Some(if accepting {
                        FinishReason::Stop
                    } else {
                        FinishReason::Abort
                    });
                }
            }
            if state.matcher.is_stopped() {
                update.new_tokens.truncate(index + 1);
                return Some(FinishReason::Stop);
            }
        }
        None
    }

    /// Jump-forward: while the grammar allows exactly one next token (not EOS, not a stop id),
    /// consumes it; at most `max_num`. Sampling from a row with one allowed token gives that
    /// token whatever the logits, temperature or seed, so appending these without a forward
    /// pass each leaves the output unchanged. Returns the forced tokens and whether the grammar
    /// is complete after them. The mask that ended the run is kept for the next step.
    pub fn take_forced_tokens(&mut self, request_id: &str, max_num: usize) -> (Vec<u32>, bool) {
        let mut forced = Vec::new();
        let Some(state) = self.requests.get_mut(request_id) else {
            return (forced, false);
        };
        let Some(stop_token_ids) = state.jump_forward.as_ref().filter(|_| state.failed.is_none()) else {
            return (forced, false);
        };
        let start = Instant::now();
        while forced.len() < max_num {
            let Ok(mask) = next_mask(&mut state.matcher, self.vocab_size, &self.eos_token_ids) else {
                break;
            };
            self.num_masks += 1;
            let only = mask.first_allowed().filter(|_| mask.num_allowed() == 1);
            let forcible = only.filter(|t| !self.eos_token_ids.contains(t) && !stop_token_ids.contains(t));
            let Some(token_id) = forcible else {
                state.next_mask = Some(Arc::new(mask));
                break;
            };
            if !matches!(state.matcher.try_consume_tokens(&[token_id]), Ok(1)) {
                break;
            }
            forced.push(token_id);
            if state.matcher.is_stopped() {
                self.mask_s += start.elapsed().as_secs_f64();
                return (forced, true);
            }
        }
        self.mask_s += start.elapsed().as_secs_f64();
        (forced, false)
    }

    /// How many of `token_ids` the request's matcher would accept in a row from its current
    /// state, without changing it (for checking draft tokens); `None` for an unconstrained id.
    pub fn num_acceptable(&mut self, request_id: &str, token_ids: &[u32]) -> Option<usize> {
        let state = self.requests.get_mut(request_id)?;
        Some(state.matcher.validate_tokens(token_ids).unwrap_or(0))
    }

    /// Takes back the last `num_tokens` consumed tokens of a request (rejected draft tokens).
    pub fn rollback(&mut self, request_id: &str, num_tokens: usize) -> Result<(), String> {
        match self.requests.get_mut(request_id) {
            Some(state) => state.matcher.rollback(num_tokens).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// The mask of `state`'s current position; on failure, one allowing only EOS, and the request
/// ends at its update.
fn checked_mask(
    id: &RequestId,
    state: &mut RequestMatcher,
    vocab_size: usize,
    eos_token_ids: &[u32],
) -> TokenMask {
    match next_mask(&mut state.matcher, vocab_size, eos_token_ids) {
        Ok(mask) => mask,
        Err(e) => {
            log::error!("structured output of request {id}: no mask: {e}");
            state.failed = Some(e);
            mask_words(&[], vocab_size, eos_token_ids, true)
        }
    }
}

/// Appends to `row_masks` the mask after each draft the grammar accepts in a row (stopping
/// before an EOS draft or a stopped grammar), then rolls the matcher back to where it was.
fn draft_masks(
    id: &RequestId,
    state: &mut RequestMatcher,
    drafts: &[u32],
    vocab_size: usize,
    eos_token_ids: &[u32],
    row_masks: &mut Vec<Arc<TokenMask>>,
) {
    let num_valid = state.matcher.validate_tokens(drafts).unwrap_or(0);
    let mut num_consumed = 0;
    for &draft in &drafts[..num_valid] {
        if eos_token_ids.contains(&draft) || !matches!(state.matcher.try_consume_tokens(&[draft]), Ok(1)) {
            break;
        }
        num_consumed += 1;
        if state.matcher.is_stopped() {
            break;
        }
        match next_mask(&mut state.matcher, vocab_size, eos_token_ids) {
            Ok(mask) => row_masks.push(Arc::new(mask)),
            Err(_) => break,
        }
    }
    if let Err(e) = state.matcher.rollback(num_consumed) {
        log::error!("structured output of request {id}: cannot roll back drafts: {e}");
        state.failed = Some(e.to_string());
        row_masks.truncate(1);
    }
}

/// The mask of the matcher's current state (every EOS id allowed where the grammar accepts).
fn next_mask(matcher: &mut Matcher, vocab_size: usize, eos_token_ids: &[u32]) -> Result<TokenMask, String> {
    let vob = matcher.compute_mask().map_err(|e| e.to_string())?;
    let eos_allowed = eos_token_ids.first().is_some_and(|&eos| vob.is_allowed(eos));
    Ok(mask_words(vob.as_slice(), vocab_size, eos_token_ids, eos_allowed))
}

/// The mask of `vocab_size` tokens from llguidance's words, with every EOS id allowed when
/// `eos_allowed`.
fn mask_words(words: &[u32], vocab_size: usize, eos_token_ids: &[u32], eos_allowed: bool) -> TokenMask {
    let num_words = vocab_size.div_ceil(32);
    let mut mask = TokenMask {
        words: words
            .iter()
            .copied()
            .chain(std::iter::repeat(0))
            .take(num_words)
            .collect(),
    };
    // Bits past the vocabulary (llguidance pads its words) must stay clear.
    if !vocab_size.is_multiple_of(32) {
        if let Some(last) = mask.words.last_mut() {
            *last &= (1u32 << (vocab_size % 32)) - 1;
        }
    }
    if eos_allowed {
        for &id in eos_token_ids {
            mask.allow(id);
        }
    }
    mask
}

#[cfg(test)]
#[path = "matchers_tests.rs"]
mod tests;
