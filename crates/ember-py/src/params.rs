//! Conversion of the Python sampling-parameter dict into [`SamplingParams`].

use ember_core::SamplingParams;
use pyo3::conversion::FromPyObjectOwned;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyString};

use crate::convert::{self, type_name};
use crate::errors::invalid_param;

/// The range of Rust integer type `T`, by name, for messages (None for other types).
fn int_range<T>() -> Option<(i128, i128)> {
    Some(match std::any::type_name::<T>() {
        "i32" => (i32::MIN.into(), i32::MAX.into()),
        "u32" => (0, u32::MAX.into()),
        "i64" => (i64::MIN.into(), i64::MAX.into()),
        "u64" | "usize" => (0, u64::MAX.into()),
        _ => return None,
    })
}

fn field<'py, T: FromPyObjectOwned<'py>>(
    value: &Bound<'py, PyAny>,
    name: &'static str,
    expected: &str,
) -> PyResult<T> {
    let mismatch = || {
        invalid_param(
            name,
            format!("{name} must be {expected}, got {}", type_name(value)),
        )
    };
    // A bool is an int to Python, but never a count, a seed or a temperature.
    if value.is_instance_of::<PyBool>() && expected != "a bool" {
        return Err(mismatch());
    }
    if let (Some(range), true) = (int_range::<T>(), value.is_instance_of::<PyInt>()) {
        // Out of T's range: say so with the range, not "must be an integer, got int".
        convert::int::<i128>(value, name, range)?;
    }
    value.extract::<T>().map_err(|_| mismatch())
}

/// A count that must be at least 1 (`n`, `max_tokens`).
fn positive(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<usize> {
    let number: i64 = field(value, name, "an integer")?;
    usize::try_from(number)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| invalid_param(name, format!("{name} must be at least 1, got {number}")))
}

fn non_negative(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<usize> {
    let number: i64 = field(value, name, "an integer")?;
    usize::try_from(number)
        .map_err(|_| invalid_param(name, format!("{name} must be at least 0, got {number}")))
}

/// `stop`: one string or a list of strings.
fn stop_strings(value: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if value.is_instance_of::<PyString>() {
        return Ok(vec![convert::text(value, "stop")?]);
    }
    let items = convert::items(value).ok_or_else(|| {
        invalid_param(
            "stop",
            format!(
                "stop must be a string or a list of strings, got {}",
                type_name(value)
            ),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            convert::text(item, "stop").map_err(|_| {
                invalid_param(
                    "stop",
                    format!(
                        "stop[{i}] must be a string of valid Unicode, got {}",
                        type_name(item)
                    ),
                )
            })
        })
        .collect()
}

/// A `logit_bias` key: an int, or a string of decimal digits (OpenAI's JSON form), exactly.
fn logit_bias_key(key: &Bound<'_, PyAny>) -> PyResult<u32> {
    let range = convert::TOKEN_ID_RANGE;
    let Ok(text) = key.cast::<PyString>() else {
        return convert::int(key, "logit_bias", range);
    };
    let text = convert::text(text.as_any(), "logit_bias")?;
    let digits = text.strip_prefix('-').unwrap_or(&text);
    let id: Option<i128> =
        (!digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten();
    match id {
        Some(id) if (range.0..=range.1).contains(&id) => Ok(id as u32),
        Some(id) => Err(invalid_param(
            "logit_bias",
            format!(
                "logit_bias token id {id} is out of range (must be in [0, {}])",
                range.1
            ),
        )),
        None => Err(invalid_param(
            "logit_bias",
            format!("logit_bias keys must be token ids (decimal digits), got {text:?}"),
        )),
    }
}

/// Reads `logit_bias`: a dict from token id (an int, or a str of digits as in OpenAI's JSON)
/// to a bias; returned sorted by id.
fn logit_bias(value: &Bound<'_, PyAny>) -> PyResult<Vec<(u32, f32)>> {
    let dict = value
        .cast::<PyDict>()
        .map_err(|_| invalid_param("logit_bias", "logit_bias must be a dict {token_id: bias}"))?;
    let mut bias = Vec::new();
    for (key, value) in dict.iter() {
        bias.push((
            logit_bias_key(&key)?,
            field(&value, "logit_bias", "a dict of numbers")?,
        ));
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
            .map_err(|_| crate::errors::invalid_request("sampling parameter names must be strings"))?;
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
                other => return Err(unknown(other)),
            }
            continue;
        }
        match key.as_str() {
            "n" => params.n = positive(&value, "n")?,
            "max_tokens" => params.max_tokens = Some(positive(&value, "max_tokens")?),
            "min_tokens" => params.min_tokens = non_negative(&value, "min_tokens")?,
            "temperature" => params.temperature = field(&value, "temperature", "a number")?,
            "top_p" => params.top_p = field(&value, "top_p", "a number")?,
            "top_k" => params.top_k = field(&value, "top_k", "an integer")?,
            "min_p" => params.min_p = field(&value, "min_p", "a number")?,
            // Read as u64, so that a negative or too large seed is refused with the range, never wrapped.
            "seed" => params.seed = Some(field::<u64>(&value, "seed", "an integer")?),
            "ignore_eos" => params.ignore_eos = field(&value, "ignore_eos", "a bool")?,
            "skip_special_tokens" => {
                params.skip_special_tokens = field(&value, "skip_special_tokens", "a bool")?;
            }
            "stop_token_ids" => params.stop_token_ids = convert::token_ids(&value, "stop_token_ids")?,
            "stop" => params.stop = stop_strings(&value)?,
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
            other => return Err(unknown(other)),
        }
    }
    params
        .validate()
        .map_err(|e| invalid_param(e.field, e.to_string()))?;
    Ok(params)
}

fn unknown(name: &str) -> PyErr {
    crate::errors::invalid_request(format!("unknown sampling parameter '{name}'"))
}
