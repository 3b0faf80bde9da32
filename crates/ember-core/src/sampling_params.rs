//! Per-request sampling controls, with vLLM's names and defaults, and their validation
//! ([`ValidSamplingParams`]: checked once, then shared).

use std::ops::Deref;
use std::sync::Arc;

use thiserror::Error;

use crate::structured_outputs::StructuredOutputs;

/// Largest number of top log-probabilities a request may ask for per token.
pub const MAX_LOGPROBS: usize = 20;

/// Largest magnitude of a `presence_penalty` or `frequency_penalty`.
pub const MAX_ADDITIVE_PENALTY: f32 = 2.0;

/// Largest magnitude of one `logit_bias` entry.
pub const MAX_LOGIT_BIAS: f32 = 100.0;

/// Most completions one request may ask for (OpenAI's limit for `n`).
pub const MAX_N: usize = 128;

/// Most stop strings one request may give (each is matched against the text every step).
pub const MAX_STOP_STRINGS: usize = 64;

/// Longest stop string, in bytes.
pub const MAX_STOP_STRING_BYTES: usize = 1024;

/// Most `stop_token_ids` one request may give.
pub const MAX_STOP_TOKEN_IDS: usize = 1024;

/// Most `logit_bias` entries one request may give.
pub const MAX_LOGIT_BIAS_ENTRIES: usize = 1024;

/// A request parameter outside its allowed range; the message names the field and the limit.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{field} {message}")]
pub struct InvalidParam {
    /// The offending field, spelled as in the Python API.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn invalid(field: &'static str, message: String) -> InvalidParam {
    InvalidParam { field, message }
}

/// How to choose the tokens of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Completions to generate for the prompt.
    pub n: usize,
    /// Most tokens to generate; `None` means up to `max_model_len`.
    pub max_tokens: Option<usize>,
    /// Fewest tokens to generate before EOS or stop tokens may end the request.
    pub min_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1].
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 or -1 disables.
    pub top_k: i32,
    /// Drop tokens whose probability is below `min_p` times the top probability; in [0, 1].
    pub min_p: f32,
    /// Seed of this request's random stream; `None` derives one from the engine seed.
    pub seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Extra token ids that end the request.
    pub stop_token_ids: Vec<u32>,
    /// Strings that end the request.
    pub stop: Vec<String>,
    /// Keep the matched stop string at the end of the text.
    pub include_stop_str_in_output: bool,
    /// Top log-probabilities to return per generated token.
    pub logprobs: Option<usize>,
    /// Leave special tokens out of the decoded text.
    pub skip_special_tokens: bool,
    /// Subtracted once from the logit of every token already generated; in [-2, 2].
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated; in [-2, 2].
    pub frequency_penalty: f32,
    /// Divides positive (multiplies negative) logits of tokens in the prompt or output; > 0.
    pub repetition_penalty: f32,
    /// `(token_id, bias)` pairs added to the logits, sorted by id, ids unique; bias in [-100, 100].
    pub logit_bias: Vec<(u32, f32)>,
    /// Top log-probabilities to return per prompt token (the prompt token itself always comes).
    pub prompt_logprobs: Option<usize>,
    /// Decode generated tokens to text; when false the text stays empty and `stop` is refused.
    pub detokenize: bool,
    /// What the output must match (JSON schema, regex, choice, grammar); `None` is free text.
    pub structured_outputs: Option<Arc<StructuredOutputs>>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            n: 1,
            max_tokens: Some(16),
            min_tokens: 0,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            include_stop_str_in_output: false,
            logprobs: None,
            skip_special_tokens: true,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            prompt_logprobs: None,
            detokenize: true,
            structured_outputs: None,
        }
    }
}

impl SamplingParams {
    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), InvalidParam> {
        if !(1..=MAX_N).contains(&self.n) {
            return Err(invalid("n", format!("must be in [1, {MAX_N}], got {}", self.n)));
        }
        if self.max_tokens == Some(0) {
            return Err(invalid("max_tokens", "must be at least 1, got 0".into()));
        }
        if let Some(max_tokens) = self.max_tokens {
            if self.min_tokens > max_tokens {
                return Err(invalid(
                    "min_tokens",
                    format!(
                        "must be at most max_tokens ({max_tokens}), got {}",
                        self.min_tokens
                    ),
                ));
            }
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(invalid(
                "temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid("top_p", format!("must be in (0, 1], got {}", self.top_p)));
        }
        if self.top_k < -1 {
            return Err(invalid(
                "top_k",
                format!(
                    "must be -1 (disable), 0 (disable) or at least 1, got {}",
                    self.top_k
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(invalid("min_p", format!("must be in [0, 1], got {}", self.min_p)));
        }
        if let Some(logprobs) = self.logprobs {
            if logprobs > MAX_LOGPROBS {
                return Err(invalid(
                    "logprobs",
                    format!("must be at most {MAX_LOGPROBS}, got {logprobs}"),
                ));
            }
        }
        if let Some(prompt_logprobs) = self.prompt_logprobs {
            if prompt_logprobs > MAX_LOGPROBS {
                return Err(invalid(
                    "prompt_logprobs",
                    format!("must be at most {MAX_LOGPROBS}, got {prompt_logprobs}"),
                ));
            }
        }
        self.validate_list_sizes()?;
        if self.stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "must not contain empty strings".into()));
        }
        if !self.detokenize && !self.stop.is_empty() {
            return Err(invalid(
                "stop",
                "needs detokenize=True (stop strings are matched on the text)".into(),
            ));
        }
        self.validate_penalties()
    }

    /// Bounds the lists a request carries, so no request can make every step slow.
    fn validate_list_sizes(&self) -> Result<(), InvalidParam> {
        for (field, len, limit) in [
            ("stop", self.stop.len(), MAX_STOP_STRINGS),
            ("stop_token_ids", self.stop_token_ids.len(), MAX_STOP_TOKEN_IDS),
            ("logit_bias", self.logit_bias.len(), MAX_LOGIT_BIAS_ENTRIES),
        ] {
            if len > limit {
                return Err(invalid(
                    field,
                    format!("may have at most {limit} entries, got {len}"),
                ));
            }
        }
        if let Some(long) = self.stop.iter().find(|s| s.len() > MAX_STOP_STRING_BYTES) {
            return Err(invalid(
                "stop",
                format!(
                    "strings may be at most {MAX_STOP_STRING_BYTES} bytes long, got one of {} bytes",
                    long.len()
                ),
            ));
        }
        Ok(())
    }

    fn validate_penalties(&self) -> Result<(), InvalidParam> {
        let additive = [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ];
        for (field, value) in additive {
            if !(-MAX_ADDITIVE_PENALTY..=MAX_ADDITIVE_PENALTY).contains(&value) {
                return Err(invalid(field, format!("must be in [-2, 2], got {value}")));
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(invalid(
                "repetition_penalty",
                format!("must be a finite number > 0, got {}", self.repetition_penalty),
            ));
        }
        if let Some(&(id, bias)) = self
            .logit_bias
            .iter()
            .find(|(_, bias)| !(-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(bias))
        {
            return Err(invalid(
                "logit_bias",
                format!("values must be in [-100, 100], got {bias} for token {id}"),
            ));
        }
        if self.logit_bias.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(invalid(
                "logit_bias",
                "must be sorted by token id without repeats".into(),
            ));
        }
        Ok(())
    }

    /// Checks the token ids in `logit_bias` and `stop_token_ids` against the model's vocabulary.
    pub fn validate_token_ids(&self, vocab_size: usize) -> Result<(), InvalidParam> {
        let out_of_range = |id: u32| id as usize >= vocab_size;
        let bad = [
            (
                "logit_bias",
                self.logit_bias
                    .iter()
                    .map(|&(id, _)| id)
                    .find(|&id| out_of_range(id)),
            ),
            (
                "stop_token_ids",
                self.stop_token_ids.iter().copied().find(|&id| out_of_range(id)),
            ),
        ];
        match bad.into_iter().find_map(|(field, id)| id.map(|id| (field, id))) {
            Some((field, id)) => Err(invalid(
                field,
                format!("token id {id} is out of range (vocab_size {vocab_size})"),
            )),
            None => Ok(()),
        }
    }

    /// True when presence, frequency or repetition penalties change the logits.
    pub fn has_penalties(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0 || self.repetition_penalty != 1.0
    }

    /// True when the model runner must know the request's tokens: penalties or prompt logprobs.
    pub fn needs_token_history(&self) -> bool {
        self.has_penalties() || self.prompt_logprobs.is_some()
    }

    /// True when the request samples greedily (argmax).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Sampling parameters that passed [`SamplingParams::validate`], shared without copying; the
/// engine takes only these, so a request's parameters are checked once, when they are made.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSamplingParams(Arc<SamplingParams>);

impl ValidSamplingParams {
    /// Validates `params`.
    pub fn new(params: SamplingParams) -> Result<Self, InvalidParam> {
        params.validate()?;
        Ok(Self(Arc::new(params)))
    }

    /// The shared parameters.
    pub fn shared(&self) -> Arc<SamplingParams> {
        Arc::clone(&self.0)
    }

    /// The parameters of completion `index` of an `n > 1` request: one sequence, the seed plus
    /// `index` when seeded, and prompt logprobs only for completion 0 (they are the same for
    /// every completion). Still valid: only fields without limits change, or become unset.
    pub fn for_completion(&self, index: usize) -> Self {
        Self(Arc::new(SamplingParams {
            n: 1,
            seed: self.seed.map(|seed| seed.wrapping_add(index as u64)),
            prompt_logprobs: self.prompt_logprobs.filter(|_| index == 0),
            ..SamplingParams::clone(&self.0)
        }))
    }
}

impl Deref for ValidSamplingParams {
    type Target = SamplingParams;

    fn deref(&self) -> &SamplingParams {
        &self.0
    }
}

/// Checks a prompt's token ids against the vocabulary (`vocab_size` ids, from 0).
pub fn check_prompt_token_ids(token_ids: &[u32], vocab_size: usize) -> Result<(), InvalidParam> {
    match token_ids.iter().find(|&&id| id as usize >= vocab_size) {
        Some(id) => Err(invalid(
            "prompt_token_ids",
            format!("contains token id {id}, out of range (vocab_size {vocab_size})"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "sampling_params_tests.rs"]
mod tests;
