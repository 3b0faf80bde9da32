//! Ember's model layer: model configs, GGUF and safetensors weight loading, tokenizers and
//! chat templates, the architectures (written once over `ember_core::Backend`) and the engine.

pub mod chat_template;
pub mod config;
pub mod device;
pub mod engine;
pub mod engine_args;
pub mod executor;
pub mod gguf;
pub mod gguf_layout;
pub mod llama;
pub mod loader;
mod mapped_file;
pub mod model_files;
#[cfg(test)]
mod reference_env;
mod request_state;
pub mod runner;
pub mod safetensors;
pub mod step_output;
pub mod tokenizer;
pub mod weights;
