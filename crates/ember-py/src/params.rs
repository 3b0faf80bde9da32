//! Conversion of the Python sampling-parameter dict into [`SamplingParams`].

use ember_core::SamplingParams;
use pyo3::conversion::FromPyObjectOwned;
use pyo3::prelude::*;
use pyo3::types::PyDict;

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
                "stop" | "stop_token_ids" => {}
                "n"
                | "min_tokens"
                | "temperature"
                | "top_p"
                | "top_k"
                | "min_p"
                | "ignore_eos"
                | "skip_special_tokens" => {}
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
            "seed" => {
                let seed: i64 = field(&value, "seed", "an integer")?;
                params.seed = Some(seed as u64);
            }
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
            other => return Err(invalid_request(format!("unknown sampling parameter '{other}'"))),
        }
    }
    params.validate().map_err(|e| invalid_request(e.to_string()))?;
    Ok(params)
}
