//! Token sampling from one row of logits, with counter-based randomness: the draw for
//! output token `token_index` of a request depends only on its seed and that index, never
//! on what else is in the batch.
//!
//! Pipeline: request adjustments (`min_tokens` mask, `logit_bias`, penalties; see
//! [`adjust_logits`]), then greedy argmax when `temperature == 0`; otherwise temperature,
//! top-k, min-p, top-p (vLLM's order: the nucleus is taken from what min-p kept), then
//! inverse-CDF sampling with one uniform draw. Log-probabilities and ranks are those of the
//! raw logits (before adjustments, temperature and filtering), like vLLM's default: they
//! describe the model, not the sampling controls.
//! The uniform draw walks the kept tokens best first under top-k, in id order otherwise;
//! either way each kept token is drawn with its renormalized probability.

use crate::logprobs::{rank_of, RowStats};
use crate::penalties::{apply_logit_bias, apply_penalties, TokenHistory};
use crate::sampler_ops::{
    exp_weights_in_place, fast_exp, pick_row, pick_sorted, retain_weights, sanitize_and_argmax, top_indices,
    top_p_cutoff,
};
use crate::sampling_params::SamplingParams;
use crate::step::{RequestId, SampledToken};

/// One sampled token and its log-probabilities.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The chosen token.
    pub token_id: u32,
    /// Log-softmax of the raw logits at the chosen token; `None` when the request asks for no
    /// logprobs (`params.logprobs` is `None`: the log-sum-exp over the vocabulary is skipped).
    pub logprob: Option<f32>,
    /// Rank of the chosen token among the raw logits (1 = most likely); set when the request
    /// asks for logprobs.
    pub rank: Option<u32>,
    /// The `params.logprobs` best tokens `(token_id, logprob)`, best first (empty when not asked).
    pub top_logprobs: Vec<(u32, f32)>,
}

impl Sample {
    /// The step-loop form of this sample.
    pub fn into_sampled_token(self, request_id: RequestId) -> SampledToken {
        SampledToken {
            request_id,
            token_id: self.token_id,
            logprob: self.logprob,
            rank: self.rank,
            top_logprobs: self.top_logprobs,
        }
    }
}

/// SplitMix64 finalizer: a bijective 64-bit mix.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform draw in `[0, 1)` for output token `token_index` of the stream `seed`.
pub fn uniform(seed: u64, token_index: usize) -> f64 {
    let bits = splitmix64(splitmix64(seed) ^ splitmix64(token_index as u64 ^ 0xD1B5_4A32_D192_ED03));
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Sets the logits of EOS and stop tokens to `-inf` while fewer than `min_tokens` tokens
/// have been generated (`token_index < params.min_tokens`), so they cannot be sampled.
pub fn mask_stop_tokens_before_min(
    logits: &mut [f32],
    params: &SamplingParams,
    eos_token_ids: &[u32],
    token_index: usize,
) {
    if token_index >= params.min_tokens {
        return;
    }
    let eos = eos_token_ids.iter().filter(|_| !params.ignore_eos);
    for &id in eos.chain(&params.stop_token_ids) {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Everything about a row's request the sampler needs besides its parameters.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleContext<'a> {
    /// The request's random seed.
    pub seed: u64,
    /// Index of the output token being sampled: picks the uniform draw and gates `min_tokens`.
    pub token_index: usize,
    /// The request's tokens, for penalties; `None` applies no penalties.
    pub history: Option<&'a TokenHistory>,
    /// End-of-sequence ids, masked while fewer than `min_tokens` tokens were generated.
    pub eos_token_ids: &'a [u32],
}

/// True when [`adjust_logits`] changes the row for this request at this token.
fn needs_adjustment(params: &SamplingParams, ctx: &SampleContext<'_>) -> bool {
    ctx.token_index < params.min_tokens
        || !params.logit_bias.is_empty()
        || (params.has_penalties() && ctx.history.is_some())
}

/// The request-specific logit adjustments, in vLLM's order: the `min_tokens` mask, then
/// `logit_bias`, then repetition, frequency and presence penalties.
pub fn adjust_logits(logits: &mut [f32], params: &SamplingParams, ctx: &SampleContext<'_>) {
    mask_stop_tokens_before_min(logits, params, ctx.eos_token_ids, ctx.token_index);
    apply_logit_bias(logits, params);
    if let Some(history) = ctx.history.filter(|_| params.has_penalties()) {
        apply_penalties(logits, params, history);
    }
}

/// Samples output token `ctx.token_index` of a request from one row of raw `logits` (`[vocab]`).
///
/// NaNs in the row become `-inf`. Adjustments, and non-greedy sampling of a request that
/// asks for logprobs (its rank needs the raw row), work on a copy; otherwise the non-greedy
/// path uses the row as scratch (it may then hold unnormalized probabilities). `rank` is
/// computed when the request asks for logprobs; `logprob` too (`None` otherwise).
pub fn sample(logits: &mut [f32], params: &SamplingParams, ctx: &SampleContext<'_>) -> Sample {
    // The log-sum-exp over the row only for a request that asks for logprobs.
    let measured = match params.logprobs {
        Some(_) => RowStats::of(logits).map(|s| (s.max_idx, s.max, Some(s))),
        None => sanitize_and_argmax(logits).map(|(i, m)| (i, m, None)),
    };
    let Some((max_idx, max, stats)) = measured else {
        return Sample {
            token_id: 0,
            logprob: params.logprobs.map(|_| f32::NEG_INFINITY),
            rank: None,
            top_logprobs: Vec::new(),
        };
    };
    let top_logprobs = match (params.logprobs, &stats) {
        (Some(k), Some(stats)) if k > 0 => stats.top_logprobs(logits, k),
        _ => Vec::new(),
    };
    let u = uniform(ctx.seed, ctx.token_index);
    let keep_raw = params.logprobs.is_some() && !params.is_greedy();
    let (token_id, raw) = if needs_adjustment(params, ctx) || keep_raw {
        let mut work = logits.to_vec();
        adjust_logits(&mut work, params, ctx);
        let token = choose(&mut work, params, u);
        (token, logits[token as usize])
    } else if params.is_greedy() || !max.is_finite() {
        (max_idx as u32, max)
    } else {
        let kept = filter(logits, params, max);
        let token = kept.pick(logits, u);
        let raw = match kept {
            Kept::Best { .. } => logits[token as usize],
            Kept::Row { .. } => max + params.temperature * logits[token as usize].ln(),
        };
        (token, raw)
    };
    Sample {
        token_id,
        logprob: stats.map(|s| s.logprob(raw)),
        rank: params.logprobs.map(|_| rank_of(logits, raw)),
        top_logprobs,
    }
}

/// The distribution [`sample`] draws from for this row and request: adjustments, then
/// temperature, top-k, min-p and top-p (`[vocab]`, zeros for dropped tokens; one-hot at the
/// argmax when greedy). Shares every step with `sample`; a testing aid.
pub fn probabilities(logits: &[f32], params: &SamplingParams, ctx: &SampleContext<'_>) -> Vec<f64> {
    let mut work = logits.to_vec();
    let mut probs = vec![0.0; work.len()];
    if RowStats::of(&mut work).is_none() {
        return probs;
    }
    adjust_logits(&mut work, params, ctx);
    let Some((max_idx, max)) = sanitize_and_argmax(&mut work) else {
        return probs;
    };
    if params.is_greedy() || !max.is_finite() {
        probs[max_idx] = 1.0;
        return probs;
    }
    match filter(&mut work, params, max) {
        Kept::Best { ids, weights } => {
            let total: f64 = weights.iter().sum();
            for (&id, &w) in ids.iter().zip(&weights) {
                probs[id as usize] = w / total;
            }
        }
        Kept::Row { total } => {
            for (p, &w) in probs.iter_mut().zip(&work) {
                *p = f64::from(w) / total;
            }
        }
    }
    probs
}

/// The greedy pick of a logits row, the token [`sample`] returns at temperature 0: the first
/// (lowest-id) maximum, NaNs read as `-inf` (and cleared in `row`); 0 for an empty row.
pub fn argmax(row: &mut [f32]) -> u32 {
    sanitize_and_argmax(row).map_or(0, |(max_idx, _)| max_idx as u32)
}

/// The token drawn from an adjusted row with uniform draw `u` (greedy: [`argmax`]).
fn choose(work: &mut [f32], params: &SamplingParams, u: f64) -> u32 {
    if params.is_greedy() {
        return argmax(work);
    }
    let Some((max_idx, max)) = sanitize_and_argmax(work) else {
        return 0;
    };
    if !max.is_finite() {
        return max_idx as u32;
    }
    filter(work, params, max).pick(work, u)
}

/// The tokens that survive the filters, and where their weights `exp((l - max) / T)` are.
enum Kept {
    /// Top-k candidates, best first, and their weights; the row is untouched.
    Best { ids: Vec<u32>, weights: Vec<f64> },
    /// The row now holds the weights (zero for dropped tokens) summing to `total`.
    Row { total: f64 },
}

impl Kept {
    /// The token chosen by inverse CDF with uniform draw `u`.
    fn pick(&self, row: &[f32], u: f64) -> u32 {
        match self {
            Self::Best { ids, weights } => ids[pick_sorted(weights, u)],
            Self::Row { total } => pick_row(row, *total, u) as u32,
        }
    }
}

/// Temperature, then top-k, min-p and top-p (vLLM's order) over a non-greedy row whose finite maximum is `max`.
/// The uniform draw walks kept tokens best first under top-k, in id order otherwise.
fn filter(row: &mut [f32], params: &SamplingParams, max: f32) -> Kept {
    let inv_t = 1.0 / params.temperature;
    let vocab = row.len();
    let top_k = usize::try_from(params.top_k).ok().filter(|&k| k > 0 && k < vocab);
    if let Some(k) = top_k {
        let mut ids = top_indices(row, k);
        let mut weights: Vec<f64> = ids
            .iter()
            .map(|&i| f64::from(fast_exp((row[i as usize] - max) * inv_t)))
            .collect();
        let keep = keep_prefix(&weights, params.top_p, params.min_p);
        ids.truncate(keep);
        weights.truncate(keep);
        return Kept::Best { ids, weights };
    }
    // From here on the row holds weights exp((l - max) / T) in [0, 1]; the top one is 1.
    let mut total = exp_weights_in_place(row, max, inv_t);
    let min_p = params.min_p;
    if min_p > 0.0 {
        total = retain_weights(row, |_, w| w >= min_p);
    }
    if params.top_p < 1.0 {
        // The nucleus of what min-p kept (vLLM's order): a best-first prefix.
        let cutoff = top_p_cutoff(row, f64::from(params.top_p) * total);
        let (cw, ci) = (row[cutoff as usize], cutoff as usize);
        total = retain_weights(row, |i, w| w > cw || (w == cw && i <= ci));
    }
    Kept::Row { total }
}

/// How many of the best-first `weights` survive min-p (against the best weight, which is 1)
/// and then top-p (against the mass min-p kept); at least one.
fn keep_prefix(weights: &[f64], top_p: f32, min_p: f32) -> usize {
    let mut keep = weights.len();
    if min_p > 0.0 {
        keep = weights.partition_point(|&w| w >= f64::from(min_p));
    }
    if top_p < 1.0 {
        let target = f64::from(top_p) * weights[..keep].iter().sum::<f64>();
        let mut cum = 0.0;
        for (j, &w) in weights[..keep].iter().enumerate() {
            if cum >= target {
                keep = j;
                break;
            }
            cum += w;
        }
    }
    keep.max(1)
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
