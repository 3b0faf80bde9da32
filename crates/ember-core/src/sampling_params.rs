//! Per-request sampling controls, with vLLM's names and defaults, and their validation.

use thiserror::Error;

/// Largest number of top log-probabilities a request may ask for per token.
pub const MAX_LOGPROBS: usize = 20;

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
        if self.stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "must not contain empty strings".into()));
        }
        Ok(())
    }

    /// True when the request samples greedily (argmax).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
