//! The scheduler's side of speculative decoding: which running requests propose drafts this
//! step and how many, and folding a verification's tokens back in.

use super::Scheduler;
use crate::request::Request;
use crate::speculative::{find_ngram, max_drafts_for_match, SpeculativeMethod};
use crate::step::RequestId;

impl Scheduler {
    /// The drafts request `id` verifies this step with a token budget of `budget`
    /// (the decode token included), or none: speculation off, the request not decoding (a
    /// prompt chunk left), the batch too large,
    /// or no room left before `max_tokens` / `max_model_len`. A draft model's drafts are
    /// placeholders (token 0) that the runner replaces with the draft's tokens.
    pub(super) fn propose_drafts(&mut self, id: &RequestId, budget: usize, num_running: usize) -> Vec<u32> {
        let Some(spec) = &self.config.speculative else {
            return Vec::new();
        };
        if spec.max_num_seqs_to_speculate > 0 && num_running > spec.max_num_seqs_to_speculate {
            return Vec::new();
        }
        let max_model_len = self.config.max_model_len;
        let (method, adaptive) = (spec.method, spec.adaptive);
        let Some(entry) = self.requests.get_mut(id) else {
            return Vec::new();
        };
        let req = &entry.request;
        if req.num_computed_tokens + 1 != req.num_tokens() {
            return Vec::new();
        }
        let room = room_for_drafts(req, max_model_len).min(budget.saturating_sub(1));
        if room == 0 {
            return Vec::new();
        }
        let num_wanted = entry
            .acceptance
            .num_to_propose(spec.num_speculative_tokens, adaptive)
            .min(room);
        if num_wanted == 0 {
            return Vec::new();
        }
        let req = &entry.request;
        let SpeculativeMethod::Ngram {
            prompt_lookup_min: min_n,
            prompt_lookup_max: max_n,
        } = method
        else {
            return vec![0; num_wanted];
        };
        let token_ids = req.token_range(0, req.num_tokens());
        let Some(found) = find_ngram(&token_ids, min_n, max_n) else {
            return Vec::new();
        };
        // Adaptive speculation also trusts a short match less (see `max_drafts_for_match`).
        let num_drafts = if adaptive {
            num_wanted.min(max_drafts_for_match(found.num_matched_tokens))
        } else {
            num_wanted
        };
        let to = (found.next_index + num_drafts).min(token_ids.len());
        token_ids[found.next_index..to].to_vec()
    }

    /// Counts a verification of `num_proposed` drafts of which `num_accepted` were accepted,
    /// for the stats and the request's adaptive draft length.
    pub(super) fn record_verification(&mut self, id: &RequestId, num_proposed: usize, num_accepted: usize) {
        if num_proposed == 0 {
            return;
        }
        self.stats.num_spec_proposed_tokens += num_proposed as u64;
        self.stats.num_spec_accepted_tokens += num_accepted as u64;
        self.stats.num_spec_verify_steps += 1;
        if let Some(entry) = self.requests.get_mut(id) {
            entry.acceptance.record(num_proposed, num_accepted);
        }
    }
}

/// Most drafts `request` may verify: each accepted draft and the token after them must fit
/// `max_tokens` and `max_model_len`, so a verification never emits past either limit.
fn room_for_drafts(request: &Request, max_model_len: usize) -> usize {
    let left_by_max_tokens = request
        .effective_max_tokens(max_model_len)
        .saturating_sub(request.num_output_tokens() + 1);
    let left_by_model_len = max_model_len.saturating_sub(request.num_tokens() + 1);
    left_by_max_tokens.min(left_by_model_len)
}
