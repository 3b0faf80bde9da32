//! The one conversion of driver, cuBLAS and NVRTC failures into backend errors.

use ember_core::BackendError;

/// Maps any driver-side error to a backend error naming the operation.
pub fn device_err(what: &str, e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{what}: {e:?}"))
}
