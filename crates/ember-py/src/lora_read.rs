//! An adapter read and checked on the caller's thread (`Engine.read_lora`), handed to
//! `Engine.add_request` so the engine loop does not read adapter files.

use std::sync::Mutex;

use ember_model::engine::lora_reader::ReadLora;
use pyo3::prelude::*;

/// A LoRA adapter read off the engine loop, consumed by the first request that passes it.
#[pyclass(name = "ReadLora", module = "ember._core", frozen)]
pub struct PyReadLora {
    read: Mutex<Option<ReadLora>>,
}

impl PyReadLora {
    /// Wraps `read`.
    pub fn new(read: ReadLora) -> Self {
        Self {
            read: Mutex::new(Some(read)),
        }
    }

    /// The adapter, unless a request took it already.
    pub fn take(&self) -> Option<ReadLora> {
        self.read.lock().ok().and_then(|mut read| read.take())
    }
}
