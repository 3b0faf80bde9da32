//! Testing aids over the Rust sampler, so Python tests can check the real code path
//! against an independent reference: the distribution a request samples from, one draw, and
//! the log-probability of a token.

use std::sync::Arc;

use ember_core::sampler::{probabilities, sample};
use ember_core::{token_logprob, SampleContext, TokenHistory, ValidSamplingParams};
use pyo3::prelude::*;

use crate::errors::{invalid_param, invalid_request};
use crate::guard::guard;
use crate::sampling_params::PySamplingParams;

/// One sampled token: `(token_id, logprob, rank, top_logprobs)`.
type PySample = (u32, Option<f32>, Option<u32>, Vec<(u32, f32)>);

/// One token's `(logprob, rank, top_logprobs)`.
type PyTokenLogprob = (f32, u32, Vec<(u32, f32)>);

fn checked_params(params: &PySamplingParams, vocab_size: usize) -> PyResult<ValidSamplingParams> {
    let params = params.params();
    params
        .validate_token_ids(vocab_size)
        .map_err(|e| invalid_param(e.field, e.to_string()))?;
    Ok(params.clone())
}

/// The probabilities `sample` draws from for one row of logits: penalties (over the given
/// prompt and output tokens), logit_bias, the min_tokens mask, temperature, top-k/top-p/min-p.
#[pyfunction]
#[pyo3(signature = (logits, params, prompt_token_ids=Vec::new(), output_token_ids=Vec::new(), eos_token_ids=Vec::new()))]
pub fn sampling_probs(
    logits: Vec<f32>,
    params: PyRef<'_, PySamplingParams>,
    prompt_token_ids: Vec<u32>,
    output_token_ids: Vec<u32>,
    eos_token_ids: Vec<u32>,
) -> PyResult<Vec<f64>> {
    guard(|| {
        let params = checked_params(&params, logits.len())?;
        let history = TokenHistory::new(Arc::from(prompt_token_ids), &output_token_ids);
        let ctx = SampleContext {
            seed: 0,
            token_index: output_token_ids.len(),
            history: Some(&history),
            eos_token_ids: &eos_token_ids,
        };
        Ok(probabilities(&logits, &params, &ctx))
    })
}

/// One draw of the sampler for output token `len(output_token_ids)` of a request with `seed`:
/// `(token_id, logprob, rank, top_logprobs)` (logprob and rank None unless `params.logprobs` is set).
#[pyfunction]
#[pyo3(signature = (logits, params, prompt_token_ids=Vec::new(), output_token_ids=Vec::new(), seed=0, eos_token_ids=Vec::new()))]
pub fn sample_token(
    mut logits: Vec<f32>,
    params: PyRef<'_, PySamplingParams>,
    prompt_token_ids: Vec<u32>,
    output_token_ids: Vec<u32>,
    seed: u64,
    eos_token_ids: Vec<u32>,
) -> PyResult<PySample> {
    guard(|| {
        let params = checked_params(&params, logits.len())?;
        let history = TokenHistory::new(Arc::from(prompt_token_ids), &output_token_ids);
        let ctx = SampleContext {
            seed,
            token_index: output_token_ids.len(),
            history: Some(&history),
            eos_token_ids: &eos_token_ids,
        };
        let s = sample(&mut logits, &params, &ctx);
        Ok((s.token_id, s.logprob, s.rank, s.top_logprobs))
    })
}

/// The raw log-softmax value of `token_id` in one row of logits, its rank (1 = most likely)
/// and the `k` best `(token_id, logprob)`: what prompt logprobs report per position.
#[pyfunction]
#[pyo3(signature = (logits, token_id, k=0))]
pub fn token_logprobs(mut logits: Vec<f32>, token_id: u32, k: usize) -> PyResult<PyTokenLogprob> {
    guard(|| {
        let vocab_size = logits.len();
        let t = token_logprob(&mut logits, token_id, k).ok_or_else(|| {
            invalid_request(format!(
                "token_id {token_id} is out of range (vocab_size {vocab_size})"
            ))
        })?;
        Ok((t.logprob, t.rank, t.top_logprobs))
    })
}
