//! The one place Rust errors become Python exceptions.

use ember_core::BackendError;
use ember_model::error::{EngineError, ModelLoadError};
use pyo3::exceptions::{PyException, PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

static EMBER_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID_REQUEST_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static MODEL_LOAD_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static OUT_OF_MEMORY_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Which Python exception class an error maps to.
#[derive(Clone, Copy, Debug)]
pub enum ErrorKind {
    /// `ember.EmberError`: any other engine failure.
    Ember,
    /// `ember.InvalidRequestError` (a `ValueError`).
    InvalidRequest,
    /// `ember.ModelLoadError`.
    ModelLoad,
    /// `ember.OutOfMemoryError` (a `MemoryError`).
    OutOfMemory,
}

fn new_class(
    py: Python<'_>,
    module: &Bound<'_, PyModule>,
    name: &str,
    doc: &str,
    bases: Vec<Bound<'_, PyAny>>,
) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__doc__", doc)?;
    if name == "InvalidRequestError" {
        // The request field the error is about, when one is; set per instance.
        namespace.set_item("param", py.None())?;
    }
    namespace.set_item("__module__", "ember")?;
    let builtins = py.import("builtins")?;
    let class = builtins
        .getattr("type")?
        .call1((name, PyTuple::new(py, bases)?, namespace))?;
    module.add(name, &class)?;
    Ok(class.cast_into::<PyType>()?.unbind())
}

/// Creates the exception hierarchy and adds it to the module.
pub fn register(py: Python<'_>, module: &Bound<'_, PyModule>) -> PyResult<()> {
    let base = new_class(
        py,
        module,
        "EmberError",
        "Base class of every error Ember raises.",
        vec![py.get_type::<PyException>().into_any()],
    )?;
    let base_bound = base.bind(py).clone().into_any();
    let invalid = new_class(
        py,
        module,
        "InvalidRequestError",
        "A request or parameter is invalid; the message names the field and the limit.",
        vec![base_bound.clone(), py.get_type::<PyValueError>().into_any()],
    )?;
    let load = new_class(
        py,
        module,
        "ModelLoadError",
        "A model file is missing, corrupt or unsupported; the message names it.",
        vec![base_bound.clone()],
    )?;
    let oom = new_class(
        py,
        module,
        "OutOfMemoryError",
        "Not enough memory for the weights or the KV cache; the message has the numbers.",
        vec![base_bound, py.get_type::<PyMemoryError>().into_any()],
    )?;
    let _ = EMBER_ERROR.set(py, base);
    let _ = INVALID_REQUEST_ERROR.set(py, invalid);
    let _ = MODEL_LOAD_ERROR.set(py, load);
    let _ = OUT_OF_MEMORY_ERROR.set(py, oom);
    Ok(())
}

/// Builds a Python exception of `kind` with `message`.
pub fn py_error(kind: ErrorKind, message: impl Into<String>) -> PyErr {
    let cell = match kind {
        ErrorKind::Ember => &EMBER_ERROR,
        ErrorKind::InvalidRequest => &INVALID_REQUEST_ERROR,
        ErrorKind::ModelLoad => &MODEL_LOAD_ERROR,
        ErrorKind::OutOfMemory => &OUT_OF_MEMORY_ERROR,
    };
    let message = message.into();
    Python::attach(|py| match cell.get(py) {
        Some(class) => PyErr::from_type(class.bind(py).clone(), message),
        None => PyException::new_err(message),
    })
}

/// Maps an engine error to its Python exception. An `InvalidRequestError` about one field
/// carries it as `param`; the `EmberError` of a failed step carries the ended requests' ids as
/// `request_ids`.
pub fn engine_error(err: EngineError) -> PyErr {
    let kind = match &err {
        EngineError::InvalidParam(e) => return invalid_param(e.field, e.to_string()),
        EngineError::InvalidRequest(_) => ErrorKind::InvalidRequest,
        EngineError::Load(ModelLoadError::Backend(BackendError::OutOfMemory { .. }))
        | EngineError::Backend(BackendError::OutOfMemory { .. }) => ErrorKind::OutOfMemory,
        EngineError::Load(_) => ErrorKind::ModelLoad,
        EngineError::Backend(_) | EngineError::StepFailed { .. } => ErrorKind::Ember,
    };
    let py_err = py_error(kind, err.to_string());
    if let EngineError::StepFailed { request_ids, .. } = err {
        set_attribute(&py_err, "request_ids", request_ids);
    }
    py_err
}

/// A request-level validation failure.
pub fn invalid_request(message: impl Into<String>) -> PyErr {
    py_error(ErrorKind::InvalidRequest, message)
}

/// A validation failure of one request field, named in `param` (e.g. "top_p").
pub fn invalid_param(param: &str, message: impl Into<String>) -> PyErr {
    let err = invalid_request(message);
    set_attribute(&err, "param", param);
    err
}

/// Attaches a detail to an exception; failing to attach it never replaces the error itself.
fn set_attribute<V>(err: &PyErr, name: &str, value: V)
where
    V: for<'py> IntoPyObject<'py>,
{
    Python::attach(|py| {
        let _ = err.value(py).setattr(name, value);
    });
}
