//! A model's weights under canonical names, whichever file format holds them, and
//! [`LoadError`], the crate's loading error.
//!
//! Canonical names: `embed_tokens`, `norm`, `lm_head`, and per layer `layers.{i}.X` with X
//! one of `input_layernorm`, `post_attention_layernorm`, `q_proj`, `k_proj`, `v_proj`,
//! `o_proj`, `gate_proj`, `up_proj`, `down_proj`; a `.bias` suffix names a bias
//! (`layers.{i}.q_proj.bias`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ember_core::WeightView;
use thiserror::Error;

use crate::chat_template::ChatTemplateError;
use crate::config::ConfigError;
use crate::gguf::{ggml_type_name, GgufError, GgufFile};
use crate::safetensors::{SafetensorsError, SafetensorsSet};

/// Anything that stops a model from loading.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The GGUF container is unreadable.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A safetensors file or index is unreadable.
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    /// The model configuration is unreadable or unsupported.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The chat template is unusable.
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
    /// The tokenizer is unreadable or unsupported.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// The backend rejected a weight or could not allocate.
    #[error(transparent)]
    Backend(#[from] ember_core::BackendError),
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
    #[error("tensor {tensor} has type {type_name}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1")]
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

/// Per-layer tensor kinds: (canonical, Hugging Face module, GGUF name).
const LAYER_TENSORS: [(&str, &str, &str); 9] = [
    ("input_layernorm", "input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "post_attention_layernorm", "ffn_norm"),
    ("q_proj", "self_attn.q_proj", "attn_q"),
    ("k_proj", "self_attn.k_proj", "attn_k"),
    ("v_proj", "self_attn.v_proj", "attn_v"),
    ("o_proj", "self_attn.o_proj", "attn_output"),
    ("gate_proj", "mlp.gate_proj", "ffn_gate"),
    ("up_proj", "mlp.up_proj", "ffn_up"),
    ("down_proj", "mlp.down_proj", "ffn_down"),
];

/// Model-wide tensors: (canonical, Hugging Face name, GGUF name).
const GLOBAL_TENSORS: [(&str, &str, &str); 3] = [
    ("embed_tokens", "model.embed_tokens.weight", "token_embd.weight"),
    ("norm", "model.norm.weight", "output_norm.weight"),
    ("lm_head", "lm_head.weight", "output.weight"),
];

/// A parsed canonical tensor name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorName {
    /// A model-wide tensor (`embed_tokens`, `norm`, `lm_head`); index into the global table.
    Global(usize),
    /// A per-layer tensor.
    Layer {
        /// Layer index.
        layer: usize,
        /// Index into the per-layer table (`q_proj`, ...).
        kind: usize,
        /// True for the bias, false for the weight.
        bias: bool,
    },
}

/// On-disk naming scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameScheme {
    /// Hugging Face (`model.layers.0.self_attn.q_proj.weight`).
    HuggingFace,
    /// GGUF / llama.cpp (`blk.0.attn_q.weight`).
    Gguf,
}

impl TensorName {
    /// Parses a canonical name such as `layers.3.q_proj.bias`.
    pub fn parse(canonical: &str) -> Option<Self> {
        if let Some(i) = GLOBAL_TENSORS.iter().position(|t| t.0 == canonical) {
            return Some(Self::Global(i));
        }
        let rest = canonical.strip_prefix("layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer = layer.parse().ok()?;
        let (part, bias) = match rest.strip_suffix(".bias") {
            Some(part) => (part, true),
            None => (rest, false),
        };
        let kind = LAYER_TENSORS.iter().position(|t| t.0 == part)?;
        Some(Self::Layer { layer, kind, bias })
    }

    /// The name a file in `scheme` stores this tensor under.
    pub fn stored_name(self, scheme: NameScheme) -> String {
        match (self, scheme) {
            (Self::Global(i), NameScheme::HuggingFace) => GLOBAL_TENSORS[i].1.to_string(),
            (Self::Global(i), NameScheme::Gguf) => GLOBAL_TENSORS[i].2.to_string(),
            (Self::Layer { layer, kind, bias }, scheme) => {
                let suffix = if bias { "bias" } else { "weight" };
                match scheme {
                    NameScheme::HuggingFace => {
                        format!("model.layers.{layer}.{}.{suffix}", LAYER_TENSORS[kind].1)
                    }
                    NameScheme::Gguf => format!("blk.{layer}.{}.{suffix}", LAYER_TENSORS[kind].2),
                }
            }
        }
    }

    /// The canonical name of a stored tensor, when it is one the models use.
    pub fn from_stored(stored: &str, scheme: NameScheme) -> Option<Self> {
        let (prefix, col) = match scheme {
            NameScheme::HuggingFace => ("model.layers.", 1),
            NameScheme::Gguf => ("blk.", 2),
        };
        if let Some(i) = GLOBAL_TENSORS.iter().position(|t| [t.1, t.2][col - 1] == stored) {
            return Some(Self::Global(i));
        }
        let rest = stored.strip_prefix(prefix)?;
        let (layer, rest) = rest.split_once('.')?;
        let layer = layer.parse().ok()?;
        let (part, bias) = if let Some(part) = rest.strip_suffix(".weight") {
            (part, false)
        } else {
            (rest.strip_suffix(".bias")?, true)
        };
        let kind = LAYER_TENSORS.iter().position(|t| [t.1, t.2][col - 1] == part)?;
        Some(Self::Layer { layer, kind, bias })
    }
}

impl fmt::Display for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Global(i) => f.write_str(GLOBAL_TENSORS[i].0),
            Self::Layer { layer, kind, bias } => {
                write!(
                    f,
                    "layers.{layer}.{}{}",
                    LAYER_TENSORS[kind].0,
                    if bias { ".bias" } else { "" }
                )
            }
        }
    }
}

enum Files {
    Gguf(GgufFile),
    Safetensors(SafetensorsSet),
}

/// A model's weights, looked up by canonical name, from a GGUF file or a safetensors set.
pub struct WeightSource {
    files: Files,
    /// Canonical name -> index into the file's tensor list.
    index: HashMap<String, usize>,
    /// Per stored tensor: whether [`WeightSource::get`] handed it out.
    read: Vec<AtomicBool>,
}

/// GGUF tensors the config reads directly rather than through [`WeightSource::get`].
const GGUF_CONFIG_TENSORS: [&str; 1] = ["rope_freqs.weight"];

/// Stored tensor names listed in full in the unused-tensor warning.
const MAX_NAMES_LISTED: usize = 8;

impl WeightSource {
    /// Weights of a parsed GGUF file.
    pub fn from_gguf(file: GgufFile) -> Self {
        let index = canonical_index(file.tensors.iter().map(|t| t.name.as_str()), NameScheme::Gguf);
        Self {
            read: unread_flags(file.tensors.len()),
            files: Files::Gguf(file),
            index,
        }
    }

    /// Weights of an opened safetensors set (Hugging Face names).
    pub fn from_safetensors(set: SafetensorsSet) -> Self {
        let index = canonical_index(
            set.tensors().iter().map(|t| t.name.as_str()),
            NameScheme::HuggingFace,
        );
        Self {
            read: unread_flags(set.tensors().len()),
            files: Files::Safetensors(set),
            index,
        }
    }

    /// The GGUF file, when the weights come from one (its metadata holds the config and
    /// tokenizer).
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.files {
            Files::Gguf(file) => Some(file),
            Files::Safetensors(_) => None,
        }
    }

    /// The naming scheme of the underlying files.
    pub fn scheme(&self) -> NameScheme {
        match self.files {
            Files::Gguf(_) => NameScheme::Gguf,
            Files::Safetensors(_) => NameScheme::HuggingFace,
        }
    }

    /// True when the tensor with this canonical name is present.
    pub fn contains(&self, canonical: &str) -> bool {
        self.index.contains_key(canonical)
    }

    /// The tensor with this canonical name, borrowed from the mapped file; the view's name
    /// is the canonical name.
    pub fn get(&self, canonical: &str) -> Result<WeightView<'_>, LoadError> {
        let Some((name, &i)) = self.index.get_key_value(canonical) else {
            return Err(self.missing(canonical));
        };
        let view = self.view(name, i)?;
        self.read[i].store(true, Ordering::Relaxed);
        Ok(view)
    }

    /// The view of stored tensor `i`, named `name`.
    fn view<'a>(&'a self, name: &'a str, i: usize) -> Result<WeightView<'a>, LoadError> {
        match &self.files {
            Files::Gguf(file) => {
                let info = &file.tensors[i];
                let dtype = info
                    .weight_dtype()
                    .ok_or_else(|| LoadError::UnsupportedTensorType {
                        tensor: info.name.clone(),
                        type_name: ggml_type_name(info.ggml_type),
                    })?;
                if dtype.bytes_for(info.num_elements()).is_none() {
                    return Err(LoadError::BadTensor {
                        tensor: info.name.clone(),
                        detail: format!(
                            "{} elements is not a whole number of {dtype} blocks",
                            info.num_elements()
                        ),
                    });
                }
                Ok(WeightView {
                    name,
                    dtype,
                    shape: &info.shape,
                    bytes: file.tensor_bytes(info),
                })
            }
            Files::Safetensors(set) => Ok(set.view(&set.tensors()[i], name)?),
        }
    }

    /// Stored names of the tensors no model code has read (so far), in file order.
    pub fn unread_tensor_names(&self) -> Vec<String> {
        let names: Vec<&str> = match &self.files {
            Files::Gguf(file) => file.tensors.iter().map(|t| t.name.as_str()).collect(),
            Files::Safetensors(set) => set.tensors().iter().map(|t| t.name.as_str()).collect(),
        };
        let read_by_config =
            |name: &str| self.scheme() == NameScheme::Gguf && GGUF_CONFIG_TENSORS.contains(&name);
        names
            .into_iter()
            .zip(&self.read)
            .filter(|(name, read)| !(read.load(Ordering::Relaxed) || read_by_config(name)))
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Logs a warning naming the tensors the loaded model left unused (weights it would
    /// need for features it does not implement are otherwise dropped silently).
    pub fn warn_unread(&self, model_name: &str) {
        let unread = self.unread_tensor_names();
        if unread.is_empty() {
            return;
        }
        let listed = unread[..unread.len().min(MAX_NAMES_LISTED)].join(", ");
        let more = unread.len().saturating_sub(MAX_NAMES_LISTED);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        log::warn!(
            "{model_name}: {} tensors in the model files are not used by Ember's model code: {listed}{more}",
            unread.len()
        );
    }

    fn missing(&self, canonical: &str) -> LoadError {
        let Some(parsed) = TensorName::parse(canonical) else {
            return LoadError::InvalidTensorName(canonical.to_string());
        };
        let path = match &self.files {
            Files::Gguf(file) => file.path().to_path_buf(),
            Files::Safetensors(set) => {
                let mut paths = set.paths();
                let first = paths.next().map_or_else(PathBuf::new, Path::to_path_buf);
                match (paths.next(), first.parent()) {
                    (Some(_), Some(dir)) => dir.to_path_buf(),
                    _ => first,
                }
            }
        };
        LoadError::MissingTensor {
            canonical: canonical.to_string(),
            stored_name: parsed.stored_name(self.scheme()),
            path,
        }
    }
}

fn unread_flags(num_tensors: usize) -> Vec<AtomicBool> {
    (0..num_tensors).map(|_| AtomicBool::new(false)).collect()
}

fn canonical_index<'a>(names: impl Iterator<Item = &'a str>, scheme: NameScheme) -> HashMap<String, usize> {
    names
        .enumerate()
        .filter_map(|(i, stored)| TensorName::from_stored(stored, scheme).map(|n| (n.to_string(), i)))
        .collect()
}

#[cfg(test)]
#[path = "weights_tests.rs"]
mod tests;
