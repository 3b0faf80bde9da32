//! Reading adapters off the engine loop: a [`LoraReader`] (cloned to callers' threads) reads and
//! checks a PEFT folder into a ready adapter ([`ReadLora`], tens of milliseconds) and knows which
//! adapters the engine holds, so a caller reads only what the engine lacks and the loop only
//! copies the result to the backend.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use crate::error::EngineError;
use crate::formats::peft::PeftAdapter;
use crate::models::lora_adapter::{LoraAdapter, LoraTargets};

/// The adapter a request runs with (vLLM's `LoRARequest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraRef {
    /// Display name.
    pub name: String,
    /// The id that keys it (block hashes, the loaded set); at least 1.
    pub lora_id: u32,
    /// The PEFT folder.
    pub path: PathBuf,
}

/// An adapter read and checked against the model, ready for the engine to load.
pub struct ReadLora {
    /// The id it was read for.
    pub lora_id: u32,
    /// The PEFT folder it was read from.
    pub path: PathBuf,
    /// The checked factors.
    pub adapter: LoraAdapter,
    /// Seconds the read and check took.
    pub read_s: f64,
}

/// Reads adapters for one engine's model; clones share the engine's view of what is loaded.
#[derive(Clone)]
pub struct LoraReader {
    targets: Arc<LoraTargets>,
    max_lora_rank: usize,
    /// `lora_id -> path` of the adapters the engine holds (written by its registry only).
    loaded: Arc<RwLock<HashMap<u32, PathBuf>>>,
}

impl LoraReader {
    /// A reader for a model of `targets` accepting ranks up to `max_lora_rank`.
    pub fn new(targets: LoraTargets, max_lora_rank: usize) -> Self {
        Self {
            targets: Arc::new(targets),
            max_lora_rank,
            loaded: Arc::default(),
        }
    }

    /// Reads and checks `lora`; errors are ModelLoadErrors naming the file and key.
    pub fn read(&self, lora: &LoraRef) -> Result<ReadLora, EngineError> {
        let start = Instant::now();
        let peft = PeftAdapter::read(&lora.path)?;
        let adapter = self.targets.adapter(&peft, self.max_lora_rank)?;
        Ok(ReadLora {
            lora_id: lora.lora_id,
            path: lora.path.clone(),
            adapter,
            read_s: start.elapsed().as_secs_f64(),
        })
    }

    /// [`LoraReader::read`], or `None` when the engine holds `lora` already (if it evicts it
    /// before the request arrives, the engine reads it again itself).
    pub fn read_unless_loaded(&self, lora: &LoraRef) -> Result<Option<ReadLora>, EngineError> {
        if self.is_loaded(lora) {
            return Ok(None);
        }
        self.read(lora).map(Some)
    }

    /// Whether the engine holds `lora` (same id and folder).
    pub fn is_loaded(&self, lora: &LoraRef) -> bool {
        let loaded = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
        loaded.get(&lora.lora_id) == Some(&lora.path)
    }

    /// Records that the engine holds `lora_id` from `path` (`None`: no longer holds it).
    pub(crate) fn set_loaded(&self, lora_id: u32, path: Option<PathBuf>) {
        let mut loaded = self.loaded.write().unwrap_or_else(PoisonError::into_inner);
        match path {
            Some(path) => loaded.insert(lora_id, path),
            None => loaded.remove(&lora_id),
        };
    }
}
