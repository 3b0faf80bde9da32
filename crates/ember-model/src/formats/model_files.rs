//! Finding a model's files from the path a user gives: a GGUF file, a folder holding one,
//! or a Hugging Face folder.

use std::path::{Path, PathBuf};

use crate::error::ModelLoadError;
use crate::formats::safetensors::SafetensorsSet;
use crate::formats::weights::{WeightNames, WeightSource};

/// Where a Hugging Face model's safetensors weights are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SafetensorsFiles {
    /// One `model.safetensors`.
    Single(PathBuf),
    /// Shards listed by `model.safetensors.index.json` (this path).
    Index(PathBuf),
}

/// The files of a Hugging Face model folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfFiles {
    /// The folder.
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// The weights.
    pub weights: SafetensorsFiles,
    /// `tokenizer_config.json`, when present (chat template, special tokens).
    pub tokenizer_config: Option<PathBuf>,
    /// `generation_config.json`, when present (extra EOS ids).
    pub generation_config: Option<PathBuf>,
}

/// A model on disk, in one of the supported layouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelFiles {
    /// A single GGUF file (weights, config, tokenizer and chat template in one).
    Gguf(PathBuf),
    /// A Hugging Face folder.
    HuggingFace(HfFiles),
}

impl ModelFiles {
    /// Resolves `path`: a `.gguf` file; a folder with `config.json`, `tokenizer.json` and
    /// `model.safetensors` or `model.safetensors.index.json`; or a folder holding exactly
    /// one `.gguf` file.
    pub fn resolve(path: &Path) -> Result<Self, ModelLoadError> {
        let fail = |detail: String| ModelLoadError::ModelFiles {
            path: path.to_path_buf(),
            detail,
        };
        let metadata = std::fs::metadata(path).map_err(|source| ModelLoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if metadata.is_file() {
            if has_gguf_extension(path) {
                return Ok(Self::Gguf(path.to_path_buf()));
            }
            return Err(fail("not a .gguf file or a model folder".into()));
        }
        if path.join("config.json").is_file() {
            return resolve_hf(path).map(Self::HuggingFace);
        }
        let entries = std::fs::read_dir(path).map_err(|source| ModelLoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut ggufs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && has_gguf_extension(p))
            .collect();
        ggufs.sort();
        match ggufs.len() {
            1 => Ok(Self::Gguf(ggufs.remove(0))),
            0 => Err(fail(
                "folder has no config.json (Hugging Face model) and no .gguf file".into(),
            )),
            _ => {
                let names: Vec<String> = ggufs
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect();
                Err(fail(format!(
                    "folder holds several .gguf files ({}); pass one of them",
                    names.join(", ")
                )))
            }
        }
    }

    /// Opens the weights, named by `names` (mapping the files; nothing is copied).
    pub fn open_weights(&self, names: &'static WeightNames) -> Result<WeightSource, ModelLoadError> {
        Ok(match self {
            Self::Gguf(path) => WeightSource::from_gguf(crate::formats::gguf::GgufFile::open(path)?, names),
            Self::HuggingFace(hf) => {
                let set = match &hf.weights {
                    SafetensorsFiles::Single(path) => SafetensorsSet::open_file(path)?,
                    SafetensorsFiles::Index(path) => SafetensorsSet::open_index(path)?,
                };
                WeightSource::from_safetensors(set, names)
            }
        })
    }
}

fn has_gguf_extension(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn resolve_hf(dir: &Path) -> Result<HfFiles, ModelLoadError> {
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    let single = optional("model.safetensors");
    let index = optional("model.safetensors.index.json");
    let tokenizer = optional("tokenizer.json");
    let mut missing = Vec::new();
    if tokenizer.is_none() {
        missing.push("tokenizer.json");
    }
    let weights = match (single, index) {
        // transformers prefers the single file when both are present.
        (Some(single), _) => Some(SafetensorsFiles::Single(single)),
        (None, Some(index)) => Some(SafetensorsFiles::Index(index)),
        (None, None) => {
            missing.push("model.safetensors (or model.safetensors.index.json)");
            None
        }
    };
    match (tokenizer, weights) {
        (Some(tokenizer), Some(weights)) => Ok(HfFiles {
            dir: dir.to_path_buf(),
            config: dir.join("config.json"),
            tokenizer,
            weights,
            tokenizer_config: optional("tokenizer_config.json"),
            generation_config: optional("generation_config.json"),
        }),
        _ => Err(ModelLoadError::ModelFiles {
            path: dir.to_path_buf(),
            detail: format!("Hugging Face model folder is missing {}", missing.join(" and ")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::safetensors::tests::{f32_bytes, temp_dir, write_safetensors};

    fn touch(path: &Path) {
        std::fs::write(path, "{}").expect("write");
    }

    #[test]
    fn resolves_hf_folder() {
        let dir = temp_dir("files-hf");
        touch(&dir.join("config.json"));
        let msg = ModelFiles::resolve(&dir).expect_err("incomplete").to_string();
        assert!(
            msg.contains("tokenizer.json") && msg.contains("model.safetensors"),
            "{msg}"
        );
        assert!(msg.contains(&dir.display().to_string()), "{msg}");

        touch(&dir.join("tokenizer.json"));
        write_safetensors(
            &dir.join("model.safetensors"),
            &[("model.norm.weight", "F32", vec![1], f32_bytes(&[1.0]))],
        );
        touch(&dir.join("generation_config.json"));
        let ModelFiles::HuggingFace(hf) = ModelFiles::resolve(&dir).expect("resolve") else {
            panic!("not HF")
        };
        assert_eq!(
            hf.weights,
            SafetensorsFiles::Single(dir.join("model.safetensors"))
        );
        assert_eq!(hf.generation_config, Some(dir.join("generation_config.json")));
        assert_eq!(hf.tokenizer_config, None);
        let weights = ModelFiles::HuggingFace(hf)
            .open_weights(&crate::formats::weights::tests::TEST_NAMES)
            .expect("weights");
        assert!(weights.contains("norm"));
    }

    #[test]
    fn resolves_gguf_file_and_folder() {
        let dir = temp_dir("files-gguf");
        let msg = ModelFiles::resolve(&dir).expect_err("empty").to_string();
        assert!(msg.contains("no config.json") && msg.contains(".gguf"), "{msg}");

        let file = dir.join("m.gguf");
        touch(&file);
        assert_eq!(
            ModelFiles::resolve(&file).expect("file"),
            ModelFiles::Gguf(file.clone())
        );
        assert_eq!(ModelFiles::resolve(&dir).expect("dir"), ModelFiles::Gguf(file));

        touch(&dir.join("other.GGUF"));
        let msg = ModelFiles::resolve(&dir).expect_err("two").to_string();
        assert!(msg.contains("m.gguf") && msg.contains("other.GGUF"), "{msg}");

        let txt = dir.join("notes.txt");
        touch(&txt);
        assert!(ModelFiles::resolve(&txt).is_err());
        let msg = ModelFiles::resolve(&dir.join("absent"))
            .expect_err("absent")
            .to_string();
        assert!(msg.contains("absent"), "{msg}");
    }
}
