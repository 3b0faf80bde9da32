//! What a router in front of several engines needs without loading a model: the prefix-cache
//! block hashes of a prompt (the engine's own function) and the model's tokenizer alone.

use std::path::Path;
use std::sync::Arc;

use ember_model::engine::loader::open_model;
use ember_model::error::EngineError;
use pyo3::prelude::*;

use crate::convert;
use crate::errors::{engine_error, invalid_param};
use crate::guard::guard;
use crate::tokenizer::PyTokenizer;

/// The prefix-cache keys of a prompt's full blocks, each chained over the one before (the
/// hashes an engine with the same `block_size` caches those blocks under for a request with
/// LoRA adapter `lora_int_id`, or the base model, and `cache_salt`, or none).
#[pyfunction]
#[pyo3(signature = (token_ids, block_size, lora_int_id=None, cache_salt=None))]
pub fn prefix_block_hashes(
    token_ids: &Bound<'_, PyAny>,
    block_size: &Bound<'_, PyAny>,
    lora_int_id: Option<&Bound<'_, PyAny>>,
    cache_salt: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<u64>> {
    guard(|| {
        let token_ids = convert::token_ids(token_ids, "token_ids")?;
        let block_size: usize = convert::int(block_size, "block_size", (1, i128::from(u32::MAX)))?;
        let lora_id: Option<u32> = lora_int_id
            .map(|id| convert::int(id, "lora_int_id", (1, i128::from(u32::MAX))))
            .transpose()?;
        let salt = cache_salt
            .map(|s| convert::text(s, "cache_salt"))
            .transpose()?
            .map(|s| ember_core::cache_salt_key(&s));
        let extra_key = ember_core::block_hash_extra_key(salt, lora_id);
        Ok(ember_core::prefix_block_hashes(&token_ids, block_size, extra_key)
            .into_iter()
            .map(|h| h.0)
            .collect())
    })
}

/// The tokenizer and chat template of the model at `model_path` (GGUF file or Hugging Face
/// folder), without loading its weights.
#[pyfunction]
pub fn load_tokenizer(py: Python<'_>, model_path: &Bound<'_, PyAny>) -> PyResult<PyTokenizer> {
    guard(|| {
        let path = convert::text(model_path, "model_path")?;
        if path.is_empty() {
            return Err(invalid_param("model_path", "model_path must not be empty"));
        }
        let opened = py
            .detach(|| open_model(Path::new(&path)))
            .map_err(|e| engine_error(EngineError::from(e)))?;
        Ok(PyTokenizer::new(
            Arc::new(opened.tokenizer),
            opened.chat_template.map(Arc::new),
        ))
    })
}
