//! Per-request sampling controls, with vLLM's names and defaults, and their validation
//! ([`ValidSamplingParams`]: checked once, then shared).

use std::ops::Deref;
use std::sync::Arc;

use thiserror::Error;

/// Largest number of top log-probabilities a request may ask for per token.
pub const MAX_LOGPROBS: usize = 20;

/// Largest magnitude of a `presence_penalty` or `frequency_penalty`.
pub const MAX_ADDITIVE_PENALTY: f32 = 2.0;

/// Largest magnitude of one `logit_bias` entry.
pub const MAX_LOGIT_BIAS: f32 = 100.0;

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
        }
    }
}

impl SamplingParams {
    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), InvalidParam> {
        if self.n < 1 {
            return Err(invalid("n", format!("must be at least 1, got {}", self.n)));
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

    /// Checks the token ids in `logit_bias` against the model's vocabulary.
    pub fn validate_token_ids(&self, vocab_size: usize) -> Result<(), InvalidParam> {
        match self.logit_bias.iter().find(|(id, _)| *id as usize >= vocab_size) {
            Some((id, _)) => Err(invalid(
                "logit_bias",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_of_a_valid_request_stay_valid() {
        let params = ValidSamplingParams::new(SamplingParams {
            n: 3,
            seed: Some(u64::MAX),
            prompt_logprobs: Some(2),
            ..Default::default()
        })
        .unwrap();
        let second = params.for_completion(1);
        assert_eq!(
            (second.n, second.seed, second.prompt_logprobs),
            (1, Some(0), None)
        );
        assert_eq!(params.for_completion(0).prompt_logprobs, Some(2));
        assert_eq!(second.validate(), Ok(()));
        assert!(ValidSamplingParams::new(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SamplingParams::default().validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field_and_limit() {
        let params = SamplingParams {
            top_p: 1.5,
            ..Default::default()
        };
        let err = params.validate().unwrap_err();
        assert_eq!(err.field, "top_p");
        assert!(err.to_string().contains("(0, 1]"), "{err}");
        let params = SamplingParams {
            temperature: -0.5,
            ..Default::default()
        };
        assert_eq!(params.validate().unwrap_err().field, "temperature");
    }

    fn error_of(params: SamplingParams) -> InvalidParam {
        params.validate().unwrap_err()
    }

    #[test]
    fn penalties_and_bias_are_range_checked() {
        for (field, params) in [
            (
                "presence_penalty",
                SamplingParams {
                    presence_penalty: 2.5,
                    ..Default::default()
                },
            ),
            (
                "frequency_penalty",
                SamplingParams {
                    frequency_penalty: f32::NAN,
                    ..Default::default()
                },
            ),
            (
                "repetition_penalty",
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
            ),
            (
                "logit_bias",
                SamplingParams {
                    logit_bias: vec![(3, 100.5)],
                    ..Default::default()
                },
            ),
            (
                "prompt_logprobs",
                SamplingParams {
                    prompt_logprobs: Some(MAX_LOGPROBS + 1),
                    ..Default::default()
                },
            ),
            (
                "stop",
                SamplingParams {
                    stop: vec!["x".into()],
                    detokenize: false,
                    ..Default::default()
                },
            ),
        ] {
            let err = error_of(params);
            assert_eq!(err.field, field, "{err}");
        }
        let err = error_of(SamplingParams {
            presence_penalty: -3.0,
            ..Default::default()
        });
        assert!(err.to_string().contains("[-2, 2]"), "{err}");
    }

    #[test]
    fn logit_bias_ids_are_checked_against_the_vocab() {
        let params = SamplingParams {
            logit_bias: vec![(1, 5.0), (99, -5.0)],
            ..Default::default()
        };
        assert_eq!(params.validate(), Ok(()));
        assert_eq!(params.validate_token_ids(100), Ok(()));
        let err = params.validate_token_ids(99).unwrap_err();
        assert_eq!(err.field, "logit_bias");
        assert!(
            err.to_string().contains("99") && err.to_string().contains("vocab_size 99"),
            "{err}"
        );
    }

    #[test]
    fn history_is_needed_only_for_penalties_and_prompt_logprobs() {
        assert!(!SamplingParams::default().needs_token_history());
        let penalized = SamplingParams {
            repetition_penalty: 1.2,
            ..Default::default()
        };
        assert!(penalized.has_penalties() && penalized.needs_token_history());
        let prompt = SamplingParams {
            prompt_logprobs: Some(0),
            ..Default::default()
        };
        assert!(!prompt.has_penalties() && prompt.needs_token_history());
    }
}
