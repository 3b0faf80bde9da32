//! The engine's LoRA adapters: loaded on first use (read from the PEFT folder, checked against
//! the model, copied to the backend), kept in a least-recently-used set of at most
//! `max_cpu_loras`, never evicted while a live request uses them (when live requests use more
//! than `max_cpu_loras` adapters, all of them stay loaded until they are idle). Callers read
//! adapters off the loop ([`LoraReader`]) and stage them; the loop reads only what was not staged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use ember_core::{LoraStats, RequestId};

use crate::engine::executor::StepExecutor;
pub use crate::engine::lora_reader::LoraRef;
use crate::engine::lora_reader::{LoraReader, ReadLora};
use crate::error::EngineError;
use crate::models::lora_adapter::LoraTargets;

/// Largest `max_lora_rank` an engine accepts.
pub const MAX_LORA_RANK_LIMIT: usize = 1024;

/// LoRA limits of an engine (vLLM's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraConfig {
    /// Most distinct adapters among running requests.
    pub max_loras: usize,
    /// Highest adapter rank accepted.
    pub max_lora_rank: usize,
    /// Most adapters kept loaded.
    pub max_cpu_loras: usize,
}

impl LoraConfig {
    /// Checks the limits; the message names the option and the limit.
    pub fn validate(&self) -> Result<(), String> {
        for (field, value) in [
            ("max_loras", self.max_loras),
            ("max_lora_rank", self.max_lora_rank),
            ("max_cpu_loras", self.max_cpu_loras),
        ] {
            if value == 0 {
                return Err(format!("{field} must be at least 1, got 0"));
            }
        }
        if self.max_lora_rank > MAX_LORA_RANK_LIMIT {
            return Err(format!(
                "max_lora_rank must be at most {MAX_LORA_RANK_LIMIT}, got {}",
                self.max_lora_rank
            ));
        }
        if self.max_cpu_loras < self.max_loras {
            return Err(format!(
                "max_cpu_loras ({}) must be at least max_loras ({})",
                self.max_cpu_loras, self.max_loras
            ));
        }
        Ok(())
    }
}

/// One loaded adapter.
struct Loaded {
    name: String,
    path: PathBuf,
    last_used: u64,
}

/// The loaded adapters and which live requests use which.
pub struct LoraRegistry {
    config: LoraConfig,
    reader: LoraReader,
    /// Adapters read off the loop and not loaded yet, by id.
    staged: HashMap<u32, ReadLora>,
    loaded: HashMap<u32, Loaded>,
    users: HashMap<RequestId, u32>,
    clock: u64,
    stats: LoraStats,
}

impl LoraRegistry {
    /// An empty registry for a model of `targets`.
    pub fn new(config: LoraConfig, targets: LoraTargets) -> Self {
        Self {
            reader: LoraReader::new(targets, config.max_lora_rank),
            config,
            staged: HashMap::new(),
            loaded: HashMap::new(),
            users: HashMap::new(),
            clock: 0,
            stats: LoraStats::default(),
        }
    }

    /// The limits.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// A reader for callers' threads that shares this registry's view of what is loaded.
    pub fn reader(&self) -> LoraReader {
        self.reader.clone()
    }

    /// Keeps `read` for the request that will use it (at most `max_cpu_loras` wait; a staged
    /// adapter never used is dropped first).
    pub fn stage(&mut self, read: ReadLora) {
        if self.staged.len() >= self.config.max_cpu_loras && !self.staged.contains_key(&read.lora_id) {
            self.staged.clear();
        }
        self.staged.insert(read.lora_id, read);
    }

    /// Makes `lora` usable by request `request_id`: loads it unless loaded (evicting the least
    /// recently used idle adapter beyond `max_cpu_loras`) and records the use.
    pub fn acquire(
        &mut self,
        executor: &mut dyn StepExecutor,
        request_id: &RequestId,
        lora: &LoraRef,
    ) -> Result<(), EngineError> {
        if lora.lora_id == 0 {
            return Err(EngineError::InvalidRequest(
                "lora_request.lora_int_id must be at least 1, got 0".into(),
            ));
        }
        self.clock += 1;
        match self.loaded.get_mut(&lora.lora_id) {
            Some(entry) if entry.path == lora.path => entry.last_used = self.clock,
            Some(entry) => {
                return Err(EngineError::InvalidRequest(format!(
                    "lora_request.lora_int_id {} is already used by adapter \"{}\" ({}); \
                     \"{}\" ({}) needs another id",
                    lora.lora_id,
                    entry.name,
                    entry.path.display(),
                    lora.name,
                    lora.path.display()
                )))
            }
            None => self.load(executor, lora)?,
        }
        self.users.insert(request_id.clone(), lora.lora_id);
        Ok(())
    }

    /// Forgets request `request_id`'s use of its adapter.
    pub fn release(&mut self, request_id: &RequestId) {
        self.users.remove(request_id);
    }

    /// Drops adapter `lora_id` unless a live request uses it; false when it is not loaded.
    pub fn unload(&mut self, executor: &mut dyn StepExecutor, lora_id: u32) -> Result<bool, EngineError> {
        if self.users.values().any(|&id| id == lora_id) {
            return Err(EngineError::InvalidRequest(format!(
                "LoRA adapter {lora_id} is in use by running requests; unload it when they finish"
            )));
        }
        let known = self.loaded.remove(&lora_id).is_some();
        executor.unload_lora(lora_id);
        self.reader.set_loaded(lora_id, None);
        Ok(known)
    }

    /// `(lora_int_id, name, path)` of every loaded adapter, by id.
    pub fn loaded(&self) -> Vec<(u32, String, PathBuf)> {
        let mut out: Vec<_> = self
            .loaded
            .iter()
            .map(|(&id, l)| (id, l.name.clone(), l.path.clone()))
            .collect();
        out.sort_by_key(|entry| entry.0);
        out
    }

    /// The registry's gauges (loaded, active adapters) and counters since the engine started.
    pub fn stats(&self) -> LoraStats {
        let active: std::collections::HashSet<u32> = self.users.values().copied().collect();
        LoraStats {
            num_loaded_adapters: self.loaded.len() as u64,
            num_active_adapters: active.len() as u64,
            ..self.stats
        }
    }

    /// Unloads the least recently used adapters no live request uses until at most `keep` stay
    /// loaded (or every one left is in use: a moment of more than `max_cpu_loras`).
    fn evict_idle(&mut self, executor: &mut dyn StepExecutor, keep: usize) {
        while self.loaded.len() > keep {
            let idle = self
                .loaded
                .iter()
                .filter(|(id, _)| !self.users.values().any(|u| u == *id))
                .min_by_key(|(_, l)| l.last_used)
                .map(|(&id, _)| id);
            let Some(victim) = idle else {
                return;
            };
            self.loaded.remove(&victim);
            executor.unload_lora(victim);
            self.reader.set_loaded(victim, None);
            self.stats.num_adapter_evictions += 1;
        }
    }

    /// Loads `lora` (as staged by a caller, or read here), evicting idle adapters to make room.
    fn load(&mut self, executor: &mut dyn StepExecutor, lora: &LoraRef) -> Result<(), EngineError> {
        let start = Instant::now();
        let (read, off_loop_s) = match self.staged.remove(&lora.lora_id) {
            Some(read) if read.path == lora.path => {
                let read_s = read.read_s;
                (read, read_s)
            }
            _ => (self.reader.read(lora)?, 0.0),
        };
        let adapter = &read.adapter;
        self.evict_idle(executor, self.config.max_cpu_loras - 1);
        executor.load_lora(lora.lora_id, adapter)?;
        self.loaded.insert(
            lora.lora_id,
            Loaded {
                name: lora.name.clone(),
                path: lora.path.clone(),
                last_used: self.clock,
            },
        );
        self.reader.set_loaded(lora.lora_id, Some(lora.path.clone()));
        self.stats.num_adapter_loads += 1;
        self.stats.adapter_load_s += start.elapsed().as_secs_f64() + off_loop_s;
        log::info!(
            "loaded LoRA adapter \"{}\" (id {}, rank {}, {} projections) in {:.3} s",
            lora.name,
            lora.lora_id,
            adapter.rank,
            adapter.matrices.len(),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_with_their_names() {
        let ok = LoraConfig {
            max_loras: 2,
            max_lora_rank: 16,
            max_cpu_loras: 2,
        };
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (
                LoraConfig { max_loras: 0, ..ok },
                "max_loras must be at least 1, got 0",
            ),
            (
                LoraConfig {
                    max_lora_rank: 2048,
                    ..ok
                },
                "max_lora_rank must be at most 1024, got 2048",
            ),
            (
                LoraConfig {
                    max_cpu_loras: 1,
                    ..ok
                },
                "max_cpu_loras (1) must be at least max_loras (2)",
            ),
        ];
        for (config, message) in cases {
            assert_eq!(config.validate().unwrap_err(), message);
        }
    }
}
