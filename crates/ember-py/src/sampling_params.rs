//! `ember.SamplingParams`: a frozen wrapper of the Rust parameters, validated once when made
//! and handed to the engine as they are. Each field is declared once below (how Python values
//! are read into it, how it reads back); the fields themselves are `ember_core::SamplingParams`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ember_core::{SamplingParams, StructuredOutputs, ValidSamplingParams};
use pyo3::conversion::FromPyObjectOwned;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyString, PyTuple};

use crate::convert::{self, type_name};
use crate::errors::invalid_param;
use crate::guard::guard;
use crate::structured_outputs::PyStructuredOutputsParams;

/// A reader of one field's Python value; the `&str` is the field name for errors.
type Read<T> = fn(&Bound<'_, PyAny>, &'static str) -> PyResult<T>;

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

fn number(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<f32> {
    field(value, name, "a number")
}

fn integer(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<i32> {
    field(value, name, "an integer")
}

fn flag(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<bool> {
    field(value, name, "a bool")
}

/// Read as u64, so that a negative or too large seed is refused with the range, never wrapped.
fn seed(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<u64> {
    field(value, name, "an integer")
}

/// `stop`: one string or a list of strings.
fn stop_strings(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<Vec<String>> {
    if value.is_instance_of::<PyString>() {
        return Ok(vec![convert::text(value, name)?]);
    }
    let items = convert::items(value).ok_or_else(|| {
        invalid_param(
            name,
            format!(
                "{name} must be a string or a list of strings, got {}",
                type_name(value)
            ),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            convert::text(item, name).map_err(|_| {
                invalid_param(
                    name,
                    format!(
                        "{name}[{i}] must be a string of valid Unicode, got {}",
                        type_name(item)
                    ),
                )
            })
        })
        .collect()
}

/// A `logit_bias` key: an int, or a string of decimal digits (OpenAI's JSON form), exactly.
fn logit_bias_key(key: &Bound<'_, PyAny>, name: &'static str) -> PyResult<u32> {
    let range = convert::TOKEN_ID_RANGE;
    let Ok(text) = key.cast::<PyString>() else {
        return convert::int(key, name, range);
    };
    let text = convert::text(text.as_any(), name)?;
    let digits = text.strip_prefix('-').unwrap_or(&text);
    let id: Option<i128> =
        (!digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten();
    match id {
        Some(id) if (range.0..=range.1).contains(&id) => Ok(id as u32),
        Some(id) => Err(invalid_param(
            name,
            format!(
                "{name} token id {id} is out of range (must be in [0, {}])",
                range.1
            ),
        )),
        None => Err(invalid_param(
            name,
            format!("{name} keys must be token ids (decimal digits), got {text:?}"),
        )),
    }
}

/// `logit_bias`: a dict from token id (an int, or a str of digits as in OpenAI's JSON) to a
/// bias; returned sorted by id.
fn logit_bias(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<Vec<(u32, f32)>> {
    let dict = value
        .cast::<PyDict>()
        .map_err(|_| invalid_param(name, format!("{name} must be a dict {{token_id: bias}}")))?;
    let mut bias = Vec::new();
    for (key, value) in dict.iter() {
        bias.push((
            logit_bias_key(&key, name)?,
            field(&value, name, "a dict of numbers")?,
        ));
    }
    bias.sort_by_key(|&(id, _)| id);
    Ok(bias)
}

/// `structured_outputs`: a `StructuredOutputsParams` or a dict of its fields.
fn structured(value: &Bound<'_, PyAny>, _name: &'static str) -> PyResult<Arc<StructuredOutputs>> {
    PyStructuredOutputsParams::read(value)
}

/// Sets a field from a Python value; `None` keeps the default.
fn set<T>(slot: &mut T, value: Option<&Bound<'_, PyAny>>, name: &'static str, read: Read<T>) -> PyResult<()> {
    if let Some(value) = value {
        *slot = read(value, name)?;
    }
    Ok(())
}

/// Sets an optional field from a Python value; `None` unsets it.
fn set_opt<T>(
    slot: &mut Option<T>,
    value: Option<&Bound<'_, PyAny>>,
    name: &'static str,
    read: Read<T>,
) -> PyResult<()> {
    *slot = value.map(|v| read(v, name)).transpose()?;
    Ok(())
}

/// `x` as the Python float a user would have written: the shortest decimal that rounds to the
/// same f32 (so `temperature=0.7` reads back as `0.7`, not `0.699999988079071`).
fn py_float(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(f64::from(x))
}

fn nonempty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

/// How to sample one request; validated when made, immutable afterwards.
///
/// Field names and defaults follow vLLM's `SamplingParams` (keyword arguments only). An
/// out-of-range value raises `ember.InvalidRequestError` (a `ValueError`) naming the field and
/// its range.
#[pyclass(name = "SamplingParams", module = "ember", frozen, eq)]
#[derive(PartialEq)]
pub struct PySamplingParams {
    params: ValidSamplingParams,
}

impl PySamplingParams {
    /// The validated parameters.
    pub fn params(&self) -> &ValidSamplingParams {
        &self.params
    }
}

/// Declares the class's other methods, then every field once:
/// `name: python_type = |params, value, name| set it, |params| read it;`. Generates the field
/// list, the keyword parser, and the `#[pymethods]` block with a getter per field. The
/// `#[pymethods]` attribute is passed in as tokens of the call site, so the names pyo3
/// generates for `**kwargs` live in the same hygiene context as the methods that use them.
macro_rules! sampling_fields {
    ($hash:tt $pymethods:tt impl $class:ident { $($methods:tt)* }
     $( $(#[doc = $doc:literal])* $name:ident : $py:ty = $parse:expr, $get:expr; )*) => {
        /// Field names, in declaration order.
        const FIELDS: &[&str] = &[$(stringify!($name)),*];

        /// Parameters from keyword arguments (`None` means the default); unknown names are a
        /// `TypeError`, wrong types an `InvalidRequestError` naming the field. Not validated.
        fn from_kwargs(kwargs: &Bound<'_, PyDict>) -> PyResult<SamplingParams> {
            let mut params = SamplingParams::default();
            for (key, value) in kwargs.iter() {
                let key: String = key.extract()?;
                let value = (!value.is_none()).then_some(&value);
                match key.as_str() {
                    $(stringify!($name) => {
                        let parse: fn(&mut SamplingParams, Option<&Bound<'_, PyAny>>, &'static str) -> PyResult<()> = $parse;
                        parse(&mut params, value, stringify!($name))?;
                    })*
                    other => {
                        return Err(PyTypeError::new_err(format!(
                            "SamplingParams() got an unexpected keyword argument '{other}'"
                        )))
                    }
                }
            }
            Ok(params)
        }

        $hash $pymethods
        impl $class {
            $(
                $(#[doc = $doc])*
                #[getter]
                fn $name(&self) -> PyResult<$py> {
                    let get: fn(&SamplingParams) -> $py = $get;
                    guard(|| Ok(get(&self.params)))
                }
            )*
            $($methods)*
        }
    };
}

sampling_fields! {
    #[pymethods]
    impl PySamplingParams {
        #[new]
        #[pyo3(signature = (**kwargs), text_signature = "(*, n=1, max_tokens=16, min_tokens=0, \
            temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=None, stop=None, stop_token_ids=None, \
            ignore_eos=False, logprobs=None, skip_special_tokens=True, presence_penalty=0.0, \
            frequency_penalty=0.0, repetition_penalty=1.0, logit_bias=None, prompt_logprobs=None, \
            include_stop_str_in_output=False, detokenize=True, structured_outputs=None)")]
        fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
            guard(|| {
                let params = match kwargs {
                    Some(kwargs) => from_kwargs(kwargs)?,
                    None => SamplingParams::default(),
                };
                let params = ValidSamplingParams::new(params).map_err(|e| invalid_param(e.field, e.to_string()))?;
                Ok(Self { params })
            })
        }

        /// Every field by name: keyword arguments that make an equal `SamplingParams`.
        fn to_dict<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
            guard(|| {
                let dict = PyDict::new(slf.py());
                for field in FIELDS {
                    dict.set_item(*field, slf.getattr(*field)?)?;
                }
                Ok(dict)
            })
        }

        /// The parameters of sub-request `index` of an n > 1 request: n=1, seed+index (mod 2**64)
        /// when seeded; only sub-request 0 computes prompt logprobs (they are the same for all).
        fn for_child(&self, index: usize) -> PyResult<Self> {
            guard(|| {
                Ok(Self {
                    params: self.params.for_completion(index),
                })
            })
        }

        /// Pickling and copying rebuild the parameters from their fields.
        fn __getnewargs_ex__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
            guard(|| Ok((PyTuple::empty(slf.py()), Self::to_dict(slf)?)))
        }

        fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
            guard(|| {
                let mut parts = Vec::with_capacity(FIELDS.len());
                for field in FIELDS {
                    parts.push(format!("{field}={}", slf.getattr(*field)?.repr()?));
                }
                Ok(format!("SamplingParams({})", parts.join(", ")))
            })
        }
    }

    /// Number of completions to return for the prompt.
    n: usize = |p, v, f| set(&mut p.n, v, f, positive), |p| p.n;
    /// Maximum number of generated tokens per completion; None: up to the engine's max_model_len.
    max_tokens: Option<usize> = |p, v, f| set_opt(&mut p.max_tokens, v, f, positive), |p| p.max_tokens;
    /// Generate at least this many tokens before EOS or stop strings may end a completion.
    min_tokens: usize = |p, v, f| set(&mut p.min_tokens, v, f, non_negative), |p| p.min_tokens;
    /// Softmax temperature; 0 means greedy.
    temperature: f64 = |p, v, f| set(&mut p.temperature, v, f, number), |p| py_float(p.temperature);
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (0 < top_p <= 1).
    top_p: f64 = |p, v, f| set(&mut p.top_p, v, f, number), |p| py_float(p.top_p);
    /// Keep only the k most likely tokens; 0 or -1 disables.
    top_k: i32 = |p, v, f| set(&mut p.top_k, v, f, integer), |p| p.top_k;
    /// Drop tokens whose probability is below min_p times the most likely token's.
    min_p: f64 = |p, v, f| set(&mut p.min_p, v, f, number), |p| py_float(p.min_p);
    /// Per-request random seed in [0, 2**64 - 1] (others are refused); None derives one from the engine seed.
    seed: Option<u64> = |p, v, f| set_opt(&mut p.seed, v, f, seed), |p| p.seed;
    /// Strings that end a completion when generated (not in the text unless include_stop_str_in_output).
    stop: Option<Vec<String>> = |p, v, f| set(&mut p.stop, v, f, stop_strings), |p| nonempty(&p.stop);
    /// Token ids that end a completion when generated.
    stop_token_ids: Option<Vec<u32>> = |p, v, f| set(&mut p.stop_token_ids, v, f, convert::token_ids),
        |p| nonempty(&p.stop_token_ids);
    /// Keep generating after the model's end-of-sequence token.
    ignore_eos: bool = |p, v, f| set(&mut p.ignore_eos, v, f, flag), |p| p.ignore_eos;
    /// Return this many most likely alternatives (plus the sampled token) per generated token.
    logprobs: Option<usize> = |p, v, f| set_opt(&mut p.logprobs, v, f, non_negative), |p| p.logprobs;
    /// Leave special tokens out of the returned text.
    skip_special_tokens: bool = |p, v, f| set(&mut p.skip_special_tokens, v, f, flag), |p| p.skip_special_tokens;
    /// Subtracted from the logit of every token already generated (-2 <= presence_penalty <= 2).
    presence_penalty: f64 = |p, v, f| set(&mut p.presence_penalty, v, f, number), |p| py_float(p.presence_penalty);
    /// Subtracted from a token's logit once per time it was generated (-2 <= frequency_penalty <= 2).
    frequency_penalty: f64 = |p, v, f| set(&mut p.frequency_penalty, v, f, number),
        |p| py_float(p.frequency_penalty);
    /// Tokens in the prompt or output get logit / r if positive, logit * r otherwise (r > 0; 1 disables).
    repetition_penalty: f64 = |p, v, f| set(&mut p.repetition_penalty, v, f, number),
        |p| py_float(p.repetition_penalty);
    /// Added to the logits of these token ids before sampling (-100 <= bias <= 100).
    logit_bias: Option<BTreeMap<u32, f64>> = |p, v, f| set(&mut p.logit_bias, v, f, logit_bias),
        |p| (!p.logit_bias.is_empty()).then(|| p.logit_bias.iter().map(|&(id, b)| (id, py_float(b))).collect());
    /// Return the log probability of each prompt token plus this many most likely alternatives.
    prompt_logprobs: Option<usize> = |p, v, f| set_opt(&mut p.prompt_logprobs, v, f, non_negative),
        |p| p.prompt_logprobs;
    /// Keep the matched stop string at the end of the text.
    include_stop_str_in_output: bool = |p, v, f| set(&mut p.include_stop_str_in_output, v, f, flag),
        |p| p.include_stop_str_in_output;
    /// Decode generated tokens to text; False leaves text empty and cannot be combined with stop.
    detokenize: bool = |p, v, f| set(&mut p.detokenize, v, f, flag), |p| p.detokenize;
    /// What the output must match (ember.StructuredOutputsParams); None: free text.
    structured_outputs: Option<PyStructuredOutputsParams> = |p, v, f| set_opt(&mut p.structured_outputs, v, f, structured),
        |p| p.structured_outputs.clone().map(PyStructuredOutputsParams::from_spec);
}
