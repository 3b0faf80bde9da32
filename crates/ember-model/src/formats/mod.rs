//! Model files: the GGUF and safetensors containers, Hugging Face and GGUF configs, the
//! weights under canonical names, and finding a model's files on disk.

pub mod config;
pub mod gguf;
mod mapped_file;
pub mod model_files;
pub mod peft;
pub mod safetensors;
pub mod weights;
