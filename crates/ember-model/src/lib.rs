//! Ember's model layer, in five layers that only use the ones listed before them:
//! `formats` (GGUF, safetensors, configs, weights under canonical names), `text` (tokenizers
//! and chat templates), `structured` (grammar-constrained output over the tokenizer),
//! `models` (the architectures, written once over `ember_core::Backend`) and `engine` (the
//! engine, its model runner and request output state).

pub mod engine;
pub mod error;
pub mod formats;
pub mod models;
#[cfg(test)]
mod reference_env;
pub mod structured;
pub mod text;
