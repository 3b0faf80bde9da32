//! Opens a model (GGUF file or Hugging Face folder): config, tokenizer, chat template and
//! weights, ready to be loaded onto a backend.

use std::path::Path;

use crate::chat_template::ChatTemplate;
use crate::config::{ConfigError, ModelConfig};
use crate::gguf::GgufFile;
use crate::model_files::ModelFiles;
use crate::tokenizer::Tokenizer;
use crate::weights::{LoadError, WeightSource};

/// Everything read from a model's files, before the weights are placed on a device.
pub struct OpenedModel {
    /// Architecture and sizes.
    pub config: ModelConfig,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, when the model ships one.
    pub chat_template: Option<ChatTemplate>,
    /// The memory-mapped weights.
    pub weights: WeightSource,
    /// A short display name.
    pub name: String,
}

/// Opens the model at `path`.
pub fn open_model(path: &Path) -> Result<OpenedModel, LoadError> {
    let name = path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let files = ModelFiles::resolve(path)?;
    match &files {
        ModelFiles::Gguf(gguf_path) => {
            let file = GgufFile::open(gguf_path)?;
            let config = ModelConfig::from_gguf(&file)?;
            let tokenizer = Tokenizer::from_gguf(&file)?;
            check_vocab_sizes(&config, &tokenizer, gguf_path)?;
            let chat_template = ChatTemplate::from_gguf(&file)?;
            Ok(OpenedModel {
                config,
                tokenizer,
                chat_template,
                weights: WeightSource::from_gguf(file),
                name,
            })
        }
        ModelFiles::HuggingFace(hf) => {
            let config = ModelConfig::from_hf_dir(&hf.dir)?;
            let tokenizer = Tokenizer::from_hf_files(&hf.tokenizer, hf.tokenizer_config.as_deref())?;
            check_vocab_sizes(&config, &tokenizer, &hf.tokenizer)?;
            let chat_template = match &hf.tokenizer_config {
                Some(path) => ChatTemplate::from_hf_tokenizer_config(path)?,
                None => None,
            };
            let weights = files.open_weights()?;
            Ok(OpenedModel {
                config,
                tokenizer,
                chat_template,
                weights,
                name,
            })
        }
    }
}

/// Refuses a tokenizer that can produce ids the model's embedding has no row for.
fn check_vocab_sizes(config: &ModelConfig, tokenizer: &Tokenizer, source: &Path) -> Result<(), ConfigError> {
    if tokenizer.vocab_size() <= config.vocab_size {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        source_name: source.display().to_string(),
        detail: format!(
            "the tokenizer has {} tokens but the model's vocab_size (embedding rows) is {}: \
             token ids {} and up would have no embedding",
            tokenizer.vocab_size(),
            config.vocab_size,
            config.vocab_size
        ),
    })
}
