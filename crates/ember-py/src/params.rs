//! Conversion of the Python sampling-parameter dict into [`SamplingParams`].

use ember_core::SamplingParams;
use pyo3::conversion::FromPyObjectOwned;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::invalid_request;

fn field<'py, T: FromPyObjectOwned<'py>>(
    value: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<T> {
    value.extract::<T>().map_err(|_| {
        let type_name = value
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        invalid_request(format!("{name} must be {expected}, got {type_name}"))
    })
}

fn non_negative(value: &Bound<'_, PyAny>, name: &str) -> PyResult<usize> {
    let number: i64 = field(value, name, "an integer")?;
    usize::try_from(number).map_err(|_| invalid_request(format!("{name} must be at least 0, got {number}")))
}

/// A seed read as a wide integer, so that a negative or too large one is refused by name,
/// never wrapped to another seed.
pub fn checked_seed(seed: i128) -> PyResult<u64> {
    u64::try_from(seed).map_err(|_| invalid_request(format!("seed must be in [0, {}], got {seed}", u64::MAX)))
}

/// Reads `logit_bias`: a dict from token id (an int, or a str of digits as in OpenAI's JSON)
/// to a bias; returned sorted by id.
fn logit_bias(value: &Bound<'_, PyAny>) -> PyResult<Vec<(u32, f32)>> {
    let dict = value
        .cast::<PyDict>()
        .map_err(|_| invalid_request("logit_bias must be a dict {token_id: bias}"))?;
    let mut bias = Vec::with_capacity(dict.len());
    for (key, value) in dict.iter() {
        let id: i64 =
            match key.cast::<PyString>() {
                Ok(text) => text.to_str()?.trim().parse().map_err(|_| {
                    invalid_request(format!("logit_bias keys must be token ids, got {text:?}"))
                })?,
                Err(_) => field(&key, "logit_bias key", "a token id (int)")?,
            };
        let id = u32::try_from(id).map_err(|_| {
            invalid_request(format!("logit_bias token id {id} is out of range (must be >= 0)"))
        })?;
        bias.push((id, field(&value, "logit_bias value", "a number")?));
    }
    bias.sort_by_key(|&(id, _)| id);
    Ok(bias)
}

/// Reads a sampling-parameter dict (keys as in `ember.SamplingParams`; `None` means default).
/// Unknown keys and wrong types are rejected with the field's name. `n` is accepted but each
/// engine request is one sequence: the Python layer fans out `n > 1`.
pub fn sampling_params_from_dict(dict: &Bound<'_, PyDict>) -> PyResult<SamplingParams> {
    let mut params = SamplingParams::default();
    for (key, value) in dict.iter() {
        let key: String = key
            .extract()
            .map_err(|_| invalid_request("sampling parameter names must be strings"))?;
        if value.is_none() {
            match key.as_str() {
                "max_tokens" => params.max_tokens = None,
                "seed" => params.seed = None,
                "logprobs" => params.logprobs = None,
                "prompt_logprobs" => params.prompt_logprobs = None,
                "logit_bias" => params.logit_bias.clear(),
                "stop" | "stop_token_ids" => {}
                "n"
                | "min_tokens"
                | "temperature"
                | "top_p"
                | "top_k"
                | "min_p"
                | "ignore_eos"
                | "skip_special_tokens"
                | "presence_penalty"
                | "frequency_penalty"
                | "repetition_penalty"
                | "include_stop_str_in_output"
                | "detokenize" => {}
                other => return Err(invalid_request(format!("unknown sampling parameter '{other}'"))),
            }
            continue;
        }
        match key.as_str() {
            "n" => params.n = non_negative(&value, "n")?,
            "max_tokens" => params.max_tokens = Some(non_negative(&value, "max_tokens")?),
            "min_tokens" => params.min_tokens = non_negative(&value, "min_tokens")?,
            "temperature" => params.temperature = field(&value, "temperature", "a number")?,
            "top_p" => params.top_p = field(&value, "top_p", "a number")?,
            "top_k" => params.top_k = field(&value, "top_k", "an integer")?,
            "min_p" => params.min_p = field(&value, "min_p", "a number")?,
            "seed" => params.seed = Some(checked_seed(field(&value, "seed", "an integer")?)?),
            "ignore_eos" => params.ignore_eos = field(&value, "ignore_eos", "a bool")?,
            "skip_special_tokens" => {
                params.skip_special_tokens = field(&value, "skip_special_tokens", "a bool")?;
            }
            "stop_token_ids" => {
                params.stop_token_ids = field(&value, "stop_token_ids", "a list of token ids")?
            }
            "stop" => {
                params.stop = match value.extract::<String>() {
                    Ok(single) => vec![single],
                    Err(_) => field(&value, "stop", "a string or a list of strings")?,
                }
            }
            "logprobs" => params.logprobs = Some(non_negative(&value, "logprobs")?),
            "prompt_logprobs" => params.prompt_logprobs = Some(non_negative(&value, "prompt_logprobs")?),
            "presence_penalty" => params.presence_penalty = field(&value, "presence_penalty", "a number")?,
            "frequency_penalty" => params.frequency_penalty = field(&value, "frequency_penalty", "a number")?,
            "repetition_penalty" => {
                params.repetition_penalty = field(&value, "repetition_penalty", "a number")?;
            }
            "logit_bias" => params.logit_bias = logit_bias(&value)?,
            "include_stop_str_in_output" => {
                params.include_stop_str_in_output = field(&value, "include_stop_str_in_output", "a bool")?;
            }
            "detokenize" => params.detokenize = field(&value, "detokenize", "a bool")?,
            other => return Err(invalid_request(format!("unknown sampling parameter '{other}'"))),
        }
    }
    params.validate().map_err(|e| invalid_request(e.to_string()))?;
    Ok(params)
}
