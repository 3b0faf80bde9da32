//! Strict conversion of Python arguments: integers with their range in the error, token-id
//! lists that refuse `bool`, `bytes` and strings, and text that must be valid Unicode. Every
//! failure is an `InvalidRequestError` naming the argument.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyInt, PyList, PyString, PyTuple};

use crate::errors::invalid_param;

/// Name of a Python value's type, for messages.
pub fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// An `int` (never a `bool`) that fits `T`; the message gives the range otherwise.
pub fn int<'py, T>(value: &Bound<'py, PyAny>, name: &'static str, range: (i128, i128)) -> PyResult<T>
where
    T: TryFrom<i128>,
{
    if !value.is_instance_of::<PyInt>() || value.is_instance_of::<PyBool>() {
        return Err(invalid_param(
            name,
            format!("{name} must be an integer, got {}", type_name(value)),
        ));
    }
    let (low, high) = range;
    let out_of_range = || {
        let shown = value.str().map(|s| s.to_string()).unwrap_or_default();
        invalid_param(
            name,
            format!("{name} must be an integer in [{low}, {high}], got {shown}"),
        )
    };
    let wide: i128 = value.extract().map_err(|_| out_of_range())?;
    if !(low..=high).contains(&wide) {
        return Err(out_of_range());
    }
    T::try_from(wide).map_err(|_| out_of_range())
}

/// The range of a token id.
pub const TOKEN_ID_RANGE: (i128, i128) = (0, u32::MAX as i128);

/// A list or tuple of token ids (ints in `[0, 2^32)`; no `bool`, `bytes` or `str`).
pub fn token_ids(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<Vec<u32>> {
    let not_a_list = || {
        invalid_param(
            name,
            format!(
                "{name} must be a list of token ids (ints), got {}",
                type_name(value)
            ),
        )
    };
    if value.is_instance_of::<PyBytes>()
        || value.is_instance_of::<PyByteArray>()
        || value.is_instance_of::<PyString>()
    {
        return Err(not_a_list());
    }
    let items = items(value).ok_or_else(not_a_list)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            int::<u32>(item, name, TOKEN_ID_RANGE).map_err(|_| {
                let shown = item.repr().map(|s| s.to_string()).unwrap_or_default();
                invalid_param(
                    name,
                    format!(
                        "{name}[{i}] must be a token id (an int in [0, {}]), got {} {shown}",
                        u32::MAX,
                        type_name(item)
                    ),
                )
            })
        })
        .collect()
}

/// The items of a list or tuple (None for anything else, `str` and `bytes` included).
pub fn items<'py>(value: &Bound<'py, PyAny>) -> Option<Vec<Bound<'py, PyAny>>> {
    match (value.cast::<PyList>(), value.cast::<PyTuple>()) {
        (Ok(list), _) => Some(list.iter().collect()),
        (_, Ok(tuple)) => Some(tuple.iter().collect()),
        _ => None,
    }
}

/// A `str` as UTF-8; lone surrogates (which no UTF-8 text can hold) are refused by name.
pub fn text(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<String> {
    let string = value
        .cast::<PyString>()
        .map_err(|_| invalid_param(name, format!("{name} must be a str, got {}", type_name(value))))?;
    string.to_str().map(str::to_owned).map_err(|_| {
        invalid_param(
            name,
            format!("{name} is not valid Unicode text (it contains a lone surrogate code point)"),
        )
    })
}
