//! Every error of the model layer, in one place: the format, text and loading errors, and
//! [`EngineError`], what the engine reports. This module uses no other module of the crate, so
//! every layer can return these types.

use std::path::PathBuf;

use ember_core::{BackendError, InvalidParam};
use thiserror::Error;

/// A GGUF file that cannot be read.
#[derive(Debug, Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid GGUF file.
    #[error("corrupt GGUF file {path}: {detail}")]
    Corrupt {
        /// File path.
        path: PathBuf,
        /// What is wrong, with the offset.
        detail: String,
    },
}

/// A safetensors file or index that cannot be used.
#[derive(Debug, Error)]
pub enum SafetensorsError {
    /// A file could not be opened, mapped or read.
    #[error("cannot read safetensors file {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid safetensors file (or index).
    #[error("corrupt safetensors file {path}: {detail}")]
    Corrupt {
        /// File path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A tensor is stored in an element type Ember does not load.
    #[error("tensor {tensor} in {path} has dtype {dtype}; supported: F32, F16, BF16")]
    UnsupportedDtype {
        /// Tensor name as stored.
        tensor: String,
        /// The stored dtype string, e.g. "I64".
        dtype: String,
        /// File holding the tensor.
        path: PathBuf,
    },
}

/// A model configuration that cannot be read or is not supported.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A config file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A config file is not valid JSON.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: serde_json::Error,
    },
    /// A required field is absent or has the wrong type.
    #[error("{source_name}: missing or invalid field {field}")]
    MissingField {
        /// The config file or GGUF file.
        source_name: String,
        /// The field or metadata key.
        field: String,
    },
    /// A field has a value Ember does not support or that is inconsistent.
    #[error("{source_name}: {detail}")]
    Invalid {
        /// The config file or GGUF file.
        source_name: String,
        /// What is wrong.
        detail: String,
    },
}

/// A tokenizer that cannot be built.
#[derive(Debug, Error)]
pub enum TokenizerError {
    /// A required metadata key or JSON field is absent or has the wrong type.
    #[error("tokenizer key `{0}` is missing or has the wrong type")]
    MissingKey(String),
    /// The tokenizer model family is not supported.
    #[error("unsupported tokenizer model `{0}`")]
    UnsupportedModel(String),
    /// The pre-tokenizer (or normalizer) is not supported.
    #[error("unsupported pre-tokenizer `{0}`")]
    UnsupportedPreTokenizer(String),
    /// A pre-tokenizer regex does not compile.
    #[error("invalid pre-tokenizer regex `{pattern}`: {detail}")]
    BadRegex {
        /// The pattern.
        pattern: String,
        /// The regex engine's message.
        detail: String,
    },
    /// A tokenizer file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A tokenizer file is not valid JSON.
    #[error("invalid JSON in {path}: {detail}")]
    Json {
        /// File path.
        path: PathBuf,
        /// Parser message.
        detail: String,
    },
    /// The data is inconsistent (e.g. a token id out of range).
    #[error("invalid tokenizer data: {0}")]
    Invalid(String),
}

/// A chat template that cannot be read, compiled or rendered.
#[derive(Debug, Error)]
pub enum ChatTemplateError {
    /// `tokenizer_config.json` (or a template file) could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A template file is not valid JSON or has the wrong shape.
    #[error("invalid chat template file {path}: {detail}")]
    Invalid {
        /// File path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The template does not compile.
    #[error("chat template syntax error: {0}")]
    Syntax(String),
    /// Rendering failed (including the template's own `raise_exception`).
    #[error("chat template error: {0}")]
    Render(String),
}

/// Anything that stops a model from loading.
#[derive(Debug, Error)]
pub enum ModelLoadError {
    /// The GGUF container is unreadable.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A safetensors file or index is unreadable.
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    /// The model configuration is unreadable or unsupported.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No model implementation runs the architecture the files name.
    #[error("unsupported architecture {name} ({field}); supported: {supported}")]
    UnsupportedArchitecture {
        /// The name found.
        name: String,
        /// The field it was read from (`architectures`, `model_type`, `general.architecture`).
        field: &'static str,
        /// The names of that field Ember runs, comma-separated.
        supported: String,
    },
    /// The chat template is unusable.
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
    /// The tokenizer is unreadable or unsupported.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The backend rejected a weight or could not allocate.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A path or file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The model path does not name a usable GGUF file or Hugging Face folder.
    #[error("{path}: {detail}")]
    ModelFiles {
        /// The path given.
        path: PathBuf,
        /// What is missing or ambiguous.
        detail: String,
    },
    /// A LoRA adapter file cannot be used; `detail` names the key and the limit.
    #[error("LoRA adapter {path}: {detail}")]
    LoraAdapter {
        /// The adapter file.
        path: PathBuf,
        /// What is wrong, naming the key.
        detail: String,
    },
    /// A canonical tensor name is malformed.
    #[error("invalid tensor name {0:?}")]
    InvalidTensorName(String),
    /// A tensor the model needs is absent.
    #[error("missing tensor {canonical} ({stored_name}) in {path}")]
    MissingTensor {
        /// Canonical name.
        canonical: String,
        /// Name the file format would use.
        stored_name: String,
        /// The file (or first shard) searched.
        path: PathBuf,
    },
    /// A GGUF tensor is stored in a type Ember does not load.
    #[error("tensor {tensor} has type {type_name}; supported: {}", supported_type_names())]
    UnsupportedTensorType {
        /// Stored tensor name.
        tensor: String,
        /// ggml type name, e.g. "Q6_K".
        type_name: String,
    },
    /// A tensor's shape or size does not fit its encoding or the model.
    #[error("tensor {tensor}: {detail}")]
    BadTensor {
        /// Stored tensor name.
        tensor: String,
        /// What is wrong.
        detail: String,
    },
}

/// The loadable GGUF types, comma-separated.
fn supported_type_names() -> String {
    let names: Vec<&str> = ember_core::WeightDType::ALL.iter().map(|t| t.name()).collect();
    names.join(", ")
}

/// Anything that can go wrong building or driving the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The model could not be opened or loaded.
    #[error(transparent)]
    Load(#[from] ModelLoadError),
    /// A request or engine option is invalid; the message names the field and the limit.
    #[error("{0}")]
    InvalidRequest(String),
    /// A request parameter is invalid; `field` names it.
    #[error(transparent)]
    InvalidParam(#[from] InvalidParam),
    /// The device failed (including running out of memory).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// One step failed: its requests (and only those) have ended; the engine keeps serving.
    #[error("the engine step computing this request failed: {source}")]
    StepFailed {
        /// The requests that were in the failed step, now ended.
        request_ids: Vec<String>,
        /// What failed.
        source: BackendError,
    },
}
