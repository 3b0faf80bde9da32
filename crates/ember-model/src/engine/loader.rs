//! Opens a model (GGUF file or Hugging Face folder): which architecture it is (through the
//! model registry), its config, tokenizer, chat template and weights, ready to be loaded onto
//! a backend.

use std::path::Path;

use crate::error::{ConfigError, ModelLoadError};
use crate::formats::config::{HfConfigJson, ModelConfig};
use crate::formats::gguf::GgufFile;
use crate::formats::model_files::ModelFiles;
use crate::formats::weights::WeightSource;
use crate::models::registry::{self, Architecture};
use crate::models::ModelSource;
use crate::text::chat_template::ChatTemplate;
use crate::text::tokenizer::Tokenizer;

/// Everything read from a model's files, before the weights are placed on a device.
pub struct OpenedModel {
    /// The architecture name the files give and the model that runs it.
    pub architecture: &'static Architecture,
    /// Hyperparameters.
    pub config: ModelConfig,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, when the model ships one.
    pub chat_template: Option<ChatTemplate>,
    /// The memory-mapped weights, named by the family's table.
    pub weights: WeightSource,
    /// A short display name.
    pub name: String,
}

impl OpenedModel {
    /// What the model is loaded from, for sequences of up to `max_model_len` tokens.
    pub fn source(&self, max_model_len: usize) -> ModelSource<'_> {
        ModelSource {
            config: &self.config,
            weights: &self.weights,
            rope_style: self.architecture.rope_style,
            max_model_len,
        }
    }
}

/// Opens the model at `path`; an architecture no model runs is refused before anything else
/// is read.
pub fn open_model(path: &Path) -> Result<OpenedModel, ModelLoadError> {
    let name = path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let files = ModelFiles::resolve(path)?;
    match &files {
        ModelFiles::Gguf(gguf_path) => {
            let file = GgufFile::open(gguf_path)?;
            let architecture = registry::resolve(&ModelConfig::gguf_architecture_names(&file)?)?;
            let config = ModelConfig::from_gguf(&file)?;
            let architecture = registry::with_experts(architecture, config.moe.is_some());
            let tokenizer = Tokenizer::from_gguf(&file)?;
            check_vocab_sizes(&config, &tokenizer, gguf_path)?;
            let chat_template = ChatTemplate::from_gguf(&file)?;
            Ok(OpenedModel {
                architecture,
                config,
                tokenizer,
                chat_template,
                weights: WeightSource::from_gguf(file, architecture.family.weight_names()),
                name,
            })
        }
        ModelFiles::HuggingFace(hf) => {
            let json = HfConfigJson::read(&hf.dir)?;
            let architecture = registry::resolve(&json.architecture_names()?)?;
            let config = ModelConfig::from_hf(&json)?;
            let tokenizer = Tokenizer::from_hf_files(&hf.tokenizer, hf.tokenizer_config.as_deref())?;
            check_vocab_sizes(&config, &tokenizer, &hf.tokenizer)?;
            let chat_template = match &hf.tokenizer_config {
                Some(path) => ChatTemplate::from_hf_tokenizer_config(path)?,
                None => None,
            };
            let weights = files.open_weights(architecture.family.weight_names())?;
            Ok(OpenedModel {
                architecture,
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
