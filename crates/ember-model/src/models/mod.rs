//! The architectures. Each family is one file written once over `ember_core::Backend` that
//! implements [`Model`] and defines its weight naming table
//! ([`crate::formats::weights::WeightNames`]); [`registry`] maps the architecture names of
//! model files to a family.
//!
//! Adding a family: a file here with its `Model` impl and `WeightNames`, a [`registry::Family`]
//! variant, and the registry rows of the names it runs (with the RoPE layout each implies).
//! Per-layer differences (sliding windows, soft-capping, scales) go into each layer's
//! `ember_core::AttentionParams`; what each layer keeps in the cache into
//! `ModelShape::kv_layers`.

pub mod blocks;
pub mod decoder_tensors;
pub mod expert_stack;
pub mod gemma;
pub mod llama;
pub mod lora;
pub mod lora_adapter;
pub mod moe;
pub mod phi3;
pub mod registry;

use ember_core::{Backend, BackendResult, ModelShape, RopeStyle};

use crate::error::ModelLoadError;
use crate::formats::config::ModelConfig;
use crate::formats::weights::WeightSource;
use crate::models::lora::LoraStep;

/// What a model is loaded from: its hyperparameters, its weights under the family's canonical
/// names, and the layout facts its architecture name implies.
pub struct ModelSource<'a> {
    /// Hyperparameters.
    pub config: &'a ModelConfig,
    /// The weights, named by the family's table.
    pub weights: &'a WeightSource,
    /// RoPE pair layout of the stored Q/K rows (GGUF converters permute some architectures').
    pub rope_style: RopeStyle,
    /// Longest sequence the engine runs (long-rope picks its factors by it).
    pub max_model_len: usize,
}

/// A decoder-only architecture whose weights live on backend `B`.
pub trait Model<B: Backend>: Send + Sync {
    /// Loads every weight of `source` onto `backend`, checking shapes against the config.
    fn load(backend: &B, source: &ModelSource<'_>) -> Result<Self, ModelLoadError>
    where
        Self: Sized;

    /// The sizes the backend plans its memory for, including what every layer keeps in the
    /// KV cache.
    fn shape(&self) -> &ModelShape;

    /// Runs one step's tokens through the model: writes their K/V into `kv_cache` at the
    /// step's slots and returns the logits of the step's `logits_indices` rows
    /// (`[logits_indices.len(), vocab_size]`, in that order). Every projection adds the
    /// step's adapters (`lora`) on their rows.
    fn forward(
        &self,
        backend: &B,
        step: &B::Step,
        kv_cache: &mut B::KvCache,
        lora: &LoraStep<'_, B>,
    ) -> BackendResult<B::Tensor>;
}
