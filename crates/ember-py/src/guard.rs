//! The last line of defence at the FFI boundary: every Python-callable entry point runs its
//! body through [`guard`], so a Rust panic becomes `ember.EmberError` instead of PyO3's
//! `PanicException` (a `BaseException` that most handlers, and every OpenAI client, miss).

use std::panic::{catch_unwind, AssertUnwindSafe};

use ember_model::engine::panic_message;
use pyo3::prelude::*;

use crate::errors::{py_error, ErrorKind};

/// Runs `body`; a panic inside it is returned as `EmberError("internal error (panic): ...")`.
pub fn guard<T>(body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let message = panic_message(payload.as_ref());
        log::error!("panic at the FFI boundary: {message}");
        Err(py_error(
            ErrorKind::Ember,
            format!("internal error (panic): {message}"),
        ))
    })
}

/// Test hook: panics inside [`guard`], to check that no panic reaches Python as one.
#[pyfunction]
pub fn _raise_panic(message: &str) -> PyResult<()> {
    guard(|| panic!("{message}"))
}
