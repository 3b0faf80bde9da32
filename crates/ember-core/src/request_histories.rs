//! The model runner's per-request token histories, kept between steps like vLLM's cached
//! request state: created from the full token list the scheduler sends once when a request
//! is admitted or resumed, extended with every sampled token, dropped when the scheduler
//! releases the id (finished, aborted or preempted).

use std::collections::HashMap;
use std::sync::Arc;

use crate::penalties::TokenHistory;
use crate::step::{RequestId, SampledToken, SchedulerOutput};

/// Token histories of the scheduled requests whose sampling needs them.
#[derive(Debug, Default)]
pub struct RequestHistories {
    histories: HashMap<RequestId, TokenHistory>,
}

impl RequestHistories {
    /// Drops the histories of released requests, then starts those sent with this step.
    pub fn apply_schedule(&mut self, output: &SchedulerOutput) {
        for id in &output.released_ids {
            self.histories.remove(id);
        }
        for seq in &output.seqs {
            if let Some(all) = &seq.all_token_ids {
                let num_prompt = seq.num_prompt_tokens.min(all.len());
                let prompt: Arc<[u32]> = Arc::from(&all[..num_prompt]);
                let history = TokenHistory::new(prompt, &all[num_prompt..]);
                self.histories.insert(seq.request_id.clone(), history);
            }
        }
    }

    /// The history of one request, when it is kept.
    pub fn get(&self, request_id: &str) -> Option<&TokenHistory> {
        self.histories.get(request_id)
    }

    /// Appends this step's sampled tokens to the histories that are kept.
    pub fn record(&mut self, sampled: &[SampledToken]) {
        for token in sampled {
            if let Some(history) = self.histories.get_mut(&token.request_id) {
                history.push_output(token.token_id);
            }
        }
    }

    /// Number of requests with a kept history.
    pub fn num_requests(&self) -> usize {
        self.histories.len()
    }
}
