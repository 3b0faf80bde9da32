//! `ember.StructuredOutputsParams` (vLLM's name and fields): what a request's output must
//! match, validated when made (exactly one constraint) and compiled when the request is added.

use std::sync::Arc;

use ember_core::{Constraint, StructuredOutputs, StructuredOutputsFields};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::convert::{self, type_name};
use crate::errors::invalid_param;
use crate::guard::guard;

const FIELD: &str = "structured_outputs";

/// A JSON schema given as a dict (or any JSON value) or as JSON text, as JSON text.
fn json_text(value: &Bound<'_, PyAny>) -> PyResult<String> {
    if value.is_instance_of::<PyString>() {
        return convert::text(value, FIELD);
    }
    let json = value.py().import("json")?;
    json.call_method1("dumps", (value,))
        .and_then(|text| text.extract::<String>())
        .map_err(|e| {
            invalid_param(
                FIELD,
                format!("{FIELD}.json must be a dict or a JSON string: {e}"),
            )
        })
}

fn optional_text(value: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<String>> {
    value
        .filter(|v| !v.is_none())
        .map(|v| {
            convert::text(v, FIELD).map_err(|_| {
                invalid_param(
                    FIELD,
                    format!("{FIELD}.{name} must be a str, got {}", type_name(v)),
                )
            })
        })
        .transpose()
}

fn choices(value: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let items = convert::items(value).ok_or_else(|| {
        invalid_param(
            FIELD,
            format!("{FIELD}.choice must be a list of str, got {}", type_name(value)),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            convert::text(item, FIELD).map_err(|_| {
                invalid_param(
                    FIELD,
                    format!("{FIELD}.choice[{i}] must be a str, got {}", type_name(item)),
                )
            })
        })
        .collect()
}

/// What a request's output must match: set exactly one of `json` (a JSON schema, dict or
/// str), `regex` (the whole output matches), `choice` (one of these strings), `grammar` (Lark,
/// llguidance's dialect) or `json_object=True` (any JSON object). `whitespace_pattern` (JSON
/// only) is a regex of the whitespace allowed between JSON tokens; by default JSON is compact
/// (`", "` and `": "` separators). Wrong values raise `ember.InvalidRequestError`.
#[pyclass(name = "StructuredOutputsParams", module = "ember", frozen, eq, hash)]
#[derive(PartialEq, Hash)]
pub struct PyStructuredOutputsParams {
    spec: Arc<StructuredOutputs>,
}

impl PyStructuredOutputsParams {
    /// The validated constraint.
    pub fn spec(&self) -> &Arc<StructuredOutputs> {
        &self.spec
    }

    /// The constraint's text when it is the one the field `field` holds (json, regex, grammar).
    fn text_of(&self, field: &str) -> Option<String> {
        match &self.spec.constraint {
            Constraint::Json(text) | Constraint::Regex(text) | Constraint::Grammar(text)
                if self.spec.constraint.field_name() == field =>
            {
                Some(text.clone())
            }
            _ => None,
        }
    }

    /// Wraps an already validated constraint.
    pub fn from_spec(spec: Arc<StructuredOutputs>) -> Self {
        Self { spec }
    }

    /// The constraint of a `SamplingParams(structured_outputs=...)` value: this class, or a
    /// dict of its keyword arguments.
    pub fn read(value: &Bound<'_, PyAny>) -> PyResult<Arc<StructuredOutputs>> {
        if let Ok(params) = value.cast::<Self>() {
            return Ok(params.get().spec.clone());
        }
        if let Ok(dict) = value.cast::<PyDict>() {
            let params = value.py().get_type::<Self>().call((), Some(dict))?;
            return Ok(params.cast::<Self>()?.get().spec.clone());
        }
        Err(invalid_param(
            FIELD,
            format!(
                "{FIELD} must be a StructuredOutputsParams (or a dict of its fields), got {}",
                type_name(value)
            ),
        ))
    }
}

#[pymethods]
impl PyStructuredOutputsParams {
    #[new]
    #[pyo3(signature = (*, json=None, regex=None, choice=None, grammar=None, json_object=None, whitespace_pattern=None))]
    fn new(
        json: Option<&Bound<'_, PyAny>>,
        regex: Option<&Bound<'_, PyAny>>,
        choice: Option<&Bound<'_, PyAny>>,
        grammar: Option<&Bound<'_, PyAny>>,
        json_object: Option<&Bound<'_, PyAny>>,
        whitespace_pattern: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        guard(|| {
            let json_object = match json_object.filter(|v| !v.is_none()) {
                Some(v) => v.extract::<bool>().map_err(|_| {
                    invalid_param(
                        FIELD,
                        format!("{FIELD}.json_object must be a bool, got {}", type_name(v)),
                    )
                })?,
                None => false,
            };
            let fields = StructuredOutputsFields {
                json: json.filter(|v| !v.is_none()).map(json_text).transpose()?,
                regex: optional_text(regex, "regex")?,
                choice: choice.filter(|v| !v.is_none()).map(choices).transpose()?,
                grammar: optional_text(grammar, "grammar")?,
                json_object,
                whitespace_pattern: optional_text(whitespace_pattern, "whitespace_pattern")?,
            };
            let spec = fields
                .validate()
                .map_err(|e| invalid_param(e.field, e.to_string()))?;
            Ok(Self { spec: Arc::new(spec) })
        })
    }

    /// The JSON schema as JSON text, when the constraint is a schema.
    #[getter]
    fn json(&self) -> PyResult<Option<String>> {
        guard(|| Ok(self.text_of("json")))
    }

    /// The regular expression the whole output must match.
    #[getter]
    fn regex(&self) -> PyResult<Option<String>> {
        guard(|| Ok(self.text_of("regex")))
    }

    /// The strings the output must be one of.
    #[getter]
    fn choice(&self) -> PyResult<Option<Vec<String>>> {
        guard(|| {
            Ok(match &self.spec.constraint {
                Constraint::Choice(choices) => Some(choices.clone()),
                _ => None,
            })
        })
    }

    /// The Lark grammar (llguidance's dialect).
    #[getter]
    fn grammar(&self) -> PyResult<Option<String>> {
        guard(|| Ok(self.text_of("grammar")))
    }

    /// True when the output must be any JSON object.
    #[getter]
    fn json_object(&self) -> PyResult<bool> {
        guard(|| Ok(self.spec.constraint == Constraint::JsonObject))
    }

    /// Regex of the whitespace allowed between JSON tokens; None: compact JSON.
    #[getter]
    fn whitespace_pattern(&self) -> PyResult<Option<String>> {
        guard(|| Ok(self.spec.whitespace_pattern.clone()))
    }

    /// The set field and the options, as keyword arguments that make an equal object.
    fn to_dict<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        guard(|| {
            let dict = PyDict::new(slf.py());
            let this = slf.get();
            let name = this.spec.constraint.field_name();
            dict.set_item(name, slf.getattr(name)?)?;
            if let Some(ws) = &this.spec.whitespace_pattern {
                dict.set_item("whitespace_pattern", ws)?;
            }
            Ok(dict)
        })
    }

    /// Pickling and copying rebuild the object from its fields.
    fn __getnewargs_ex__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
        guard(|| Ok((PyTuple::empty(slf.py()), Self::to_dict(slf)?)))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        guard(|| {
            let dict = Self::to_dict(slf)?;
            let mut parts = Vec::new();
            for (key, value) in dict.iter() {
                parts.push(format!("{}={}", key, value.repr()?));
            }
            Ok(format!("StructuredOutputsParams({})", parts.join(", ")))
        })
    }
}
