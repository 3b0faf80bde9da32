//! The engine's LoRA face: a request's adapter acquired at add time and released when the
//! request ends; unloading and listing adapters.

use std::path::PathBuf;

use ember_core::{LoraStats, RequestId};

use super::LlmEngine;
use crate::engine::lora_reader::{LoraReader, ReadLora};
use crate::engine::lora_registry::LoraRef;
use crate::error::EngineError;

impl LlmEngine {
    /// Loads (on first use) and records `lora` for request `request_id`; its id, or `None` for
    /// the base model.
    pub(super) fn acquire_lora(
        &mut self,
        request_id: &RequestId,
        lora: Option<&LoraRef>,
    ) -> Result<Option<u32>, EngineError> {
        let Some(lora) = lora else {
            return Ok(None);
        };
        let Some(registry) = self.loras.as_mut() else {
            return Err(EngineError::InvalidRequest(format!(
                "lora_request \"{}\" needs an engine made with enable_lora=True",
                lora.name
            )));
        };
        registry.acquire(self.executor.as_mut(), request_id, lora)?;
        Ok(Some(lora.lora_id))
    }

    /// Forgets request `request_id`'s adapter use.
    pub(super) fn release_lora(&mut self, request_id: &RequestId) {
        if let Some(registry) = self.loras.as_mut() {
            registry.release(request_id);
        }
    }

    /// Drops every per-request record of an ended request.
    pub(super) fn forget_request(&mut self, request_id: &RequestId) {
        self.requests.remove(request_id);
        self.structured.remove(request_id);
        self.release_lora(request_id);
    }

    /// Unloads adapter `lora_id` (refused while a live request uses it); false when it was not
    /// loaded.
    pub fn unload_lora(&mut self, lora_id: u32) -> Result<bool, EngineError> {
        match self.loras.as_mut() {
            Some(registry) => registry.unload(self.executor.as_mut(), lora_id),
            None => Ok(false),
        }
    }

    /// `(lora_int_id, name, path)` of every loaded adapter.
    pub fn loaded_loras(&self) -> Vec<(u32, String, PathBuf)> {
        self.loras.as_ref().map(|r| r.loaded()).unwrap_or_default()
    }

    /// A reader for callers' threads (`None` without LoRA): read an adapter there and
    /// [`LlmEngine::stage_lora`] it, so the engine loop does not stall on the files.
    pub fn lora_reader(&self) -> Option<LoraReader> {
        self.loras.as_ref().map(|r| r.reader())
    }

    /// Hands an adapter read off the loop to the engine, for the request that uses it next.
    pub fn stage_lora(&mut self, read: ReadLora) {
        if let Some(registry) = self.loras.as_mut() {
            registry.stage(read);
        }
    }

    /// The LoRA registry's gauges and counters (zeros without LoRA).
    pub fn lora_stats(&self) -> LoraStats {
        self.loras.as_ref().map(|r| r.stats()).unwrap_or_default()
    }
}
