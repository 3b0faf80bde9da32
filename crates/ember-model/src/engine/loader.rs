//! Opens a model (GGUF file or Hugging Face folder): config, tokenizer, chat template and
//! weights, ready to be loaded onto a backend.

use std::path::Path;

use crate::error::ModelLoadError;
use crate::formats::config::ModelConfig;
use crate::formats::gguf::GgufFile;
use crate::formats::model_files::ModelFiles;
use crate::formats::weights::WeightSource;
use crate::text::chat_template::ChatTemplate;
use crate::text::tokenizer::Tokenizer;

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
pub fn open_model(path: &Path) -> Result<OpenedModel, ModelLoadError> {
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
