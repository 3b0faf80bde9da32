//! A model's weights under canonical names, whichever file format holds them. Each model
//! family brings its own [`WeightNames`] table (see `models/`): model-wide tensors such as
//! `embed_tokens`, and per layer `layers.{i}.X` where a `.bias` suffix names a bias
//! (`layers.{i}.q_proj.bias`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ember_core::WeightView;

use crate::error::ModelLoadError;
use crate::formats::gguf::{ggml_type_name, GgufFile};
use crate::formats::safetensors::SafetensorsSet;

/// One tensor kind's names: canonical, in Hugging Face files and in GGUF files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorNames {
    /// Ember's name (`embed_tokens`, or `q_proj` for a per-layer kind).
    pub canonical: &'static str,
    /// Hugging Face name: the full name of a model-wide tensor, the module path of a per-layer
    /// one (`self_attn.q_proj`, under `model.layers.{i}.` and before `.weight` / `.bias`).
    pub hf: &'static str,
    /// GGUF name: the full name of a model-wide tensor, the per-layer part of one (`attn_q`,
    /// under `blk.{i}.` and before `.weight` / `.bias`).
    pub gguf: &'static str,
}

/// A model family's tensor naming table.
#[derive(Debug)]
pub struct WeightNames {
    /// Model-wide tensors.
    pub global: &'static [TensorNames],
    /// Per-layer tensor kinds.
    pub layer: &'static [TensorNames],
}

/// A parsed canonical tensor name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorName {
    /// A model-wide tensor; index into the table's `global` list.
    Global(usize),
    /// A per-layer tensor.
    Layer {
        /// Layer index.
        layer: usize,
        /// Index into the table's `layer` list.
        kind: usize,
        /// True for the bias, false for the weight.
        bias: bool,
        /// The expert, for a name with an `{e}` placeholder (mixture-of-experts layers).
        expert: Option<usize>,
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
    /// Parses a canonical name of `names` such as `layers.3.q_proj.bias`.
    pub fn parse(names: &WeightNames, canonical: &str) -> Option<Self> {
        if let Some(i) = names.global.iter().position(|t| t.canonical == canonical) {
            return Some(Self::Global(i));
        }
        let rest = canonical.strip_prefix("layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer = layer.parse().ok()?;
        let (part, bias) = match rest.strip_suffix(".bias") {
            Some(part) => (part, true),
            None => (rest, false),
        };
        let (kind, expert) = find_part(names, part, |t| t.canonical)?;
        Some(Self::Layer {
            layer,
            kind,
            bias,
            expert,
        })
    }

    /// The name a file in `scheme` stores this tensor under.
    pub fn stored_name(self, names: &WeightNames, scheme: NameScheme) -> String {
        match self {
            Self::Global(i) => scheme.name_of(&names.global[i]).to_string(),
            Self::Layer {
                layer,
                kind,
                bias,
                expert,
            } => {
                let suffix = if bias { "bias" } else { "weight" };
                let part = fill_expert(scheme.name_of(&names.layer[kind]), expert);
                match scheme {
                    NameScheme::HuggingFace => format!("model.layers.{layer}.{part}.{suffix}"),
                    NameScheme::Gguf => format!("blk.{layer}.{part}.{suffix}"),
                }
            }
        }
    }

    /// The canonical name of a stored tensor, when it is one of `names`.
    pub fn from_stored(names: &WeightNames, stored: &str, scheme: NameScheme) -> Option<Self> {
        let prefix = match scheme {
            NameScheme::HuggingFace => "model.layers.",
            NameScheme::Gguf => "blk.",
        };
        if let Some(i) = names.global.iter().position(|t| scheme.name_of(t) == stored) {
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
        let (kind, expert) = find_part(names, part, |t| scheme.name_of(t))?;
        Some(Self::Layer {
            layer,
            kind,
            bias,
            expert,
        })
    }

    /// The canonical name, e.g. `layers.3.q_proj.bias`.
    pub fn canonical(self, names: &WeightNames) -> String {
        match self {
            Self::Global(i) => names.global[i].canonical.to_string(),
            Self::Layer {
                layer,
                kind,
                bias,
                expert,
            } => {
                let suffix = if bias { ".bias" } else { "" };
                let part = fill_expert(names.layer[kind].canonical, expert);
                format!("layers.{layer}.{part}{suffix}")
            }
        }
    }
}

/// The layer-table entry whose name (`name_of`) matches `part`, and the expert index an
/// `{e}` placeholder in it stands for.
fn find_part(
    names: &WeightNames,
    part: &str,
    name_of: impl Fn(&TensorNames) -> &'static str,
) -> Option<(usize, Option<usize>)> {
    names.layer.iter().enumerate().find_map(|(kind, t)| {
        let pattern = name_of(t);
        match pattern.split_once("{e}") {
            None => (pattern == part).then_some((kind, None)),
            Some((before, after)) => {
                let digits = part.strip_prefix(before)?.strip_suffix(after)?;
                let ok = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
                ok.then(|| digits.parse().ok().map(|e| (kind, Some(e))))?
            }
        }
    })
}

/// `pattern` with its `{e}` placeholder (if any) replaced by `expert`.
fn fill_expert(pattern: &str, expert: Option<usize>) -> String {
    match expert {
        Some(e) => pattern.replace("{e}", &e.to_string()),
        None => pattern.to_string(),
    }
}

impl NameScheme {
    /// The name `names` gives in this scheme.
    fn name_of(self, names: &TensorNames) -> &'static str {
        match self {
            Self::HuggingFace => names.hf,
            Self::Gguf => names.gguf,
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
    names: &'static WeightNames,
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
    /// Weights of a parsed GGUF file, named by `names`.
    pub fn from_gguf(file: GgufFile, names: &'static WeightNames) -> Self {
        let stored = file.tensors.iter().map(|t| t.name.as_str());
        let index = canonical_index(names, stored, NameScheme::Gguf);
        Self {
            read: unread_flags(file.tensors.len()),
            files: Files::Gguf(file),
            names,
            index,
        }
    }

    /// Weights of an opened safetensors set (Hugging Face names), named by `names`.
    pub fn from_safetensors(set: SafetensorsSet, names: &'static WeightNames) -> Self {
        let stored = set.tensors().iter().map(|t| t.name.as_str());
        let index = canonical_index(names, stored, NameScheme::HuggingFace);
        Self {
            read: unread_flags(set.tensors().len()),
            files: Files::Safetensors(set),
            names,
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
    pub fn get(&self, canonical: &str) -> Result<WeightView<'_>, ModelLoadError> {
        let Some((name, &i)) = self.index.get_key_value(canonical) else {
            return Err(self.missing(canonical));
        };
        let view = self.view(name, i)?;
        self.read[i].store(true, Ordering::Relaxed);
        Ok(view)
    }

    /// The view of stored tensor `i`, named `name`.
    fn view<'a>(&'a self, name: &'a str, i: usize) -> Result<WeightView<'a>, ModelLoadError> {
        match &self.files {
            Files::Gguf(file) => {
                let info = &file.tensors[i];
                let dtype = info
                    .weight_dtype()
                    .ok_or_else(|| ModelLoadError::UnsupportedTensorType {
                        tensor: info.name.clone(),
                        type_name: ggml_type_name(info.ggml_type),
                    })?;
                if dtype.bytes_for(info.num_elements()).is_none() {
                    return Err(ModelLoadError::BadTensor {
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

    fn missing(&self, canonical: &str) -> ModelLoadError {
        let Some(parsed) = TensorName::parse(self.names, canonical) else {
            return ModelLoadError::InvalidTensorName(canonical.to_string());
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
        ModelLoadError::MissingTensor {
            canonical: canonical.to_string(),
            stored_name: parsed.stored_name(self.names, self.scheme()),
            path,
        }
    }
}

fn unread_flags(num_tensors: usize) -> Vec<AtomicBool> {
    (0..num_tensors).map(|_| AtomicBool::new(false)).collect()
}

fn canonical_index<'a>(
    names: &WeightNames,
    stored: impl Iterator<Item = &'a str>,
    scheme: NameScheme,
) -> HashMap<String, usize> {
    stored
        .enumerate()
        .filter_map(|(i, stored)| {
            TensorName::from_stored(names, stored, scheme).map(|n| (n.canonical(names), i))
        })
        .collect()
}

#[cfg(test)]
#[path = "weights_tests.rs"]
pub(crate) mod tests;
