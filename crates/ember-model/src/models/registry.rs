//! Which model runs which architecture: the names model files give (Hugging Face
//! `architectures` / `model_type`, GGUF `general.architecture`) mapped to a family, with the
//! layout facts each name implies.

use ember_core::{Backend, RopeStyle};

use crate::error::ModelLoadError;
use crate::formats::config::{ArchitectureName, NameSource};
use crate::formats::weights::WeightNames;
use crate::models::expert_stack::ExpertTensors;
use crate::models::gemma::{GemmaModel, GEMMA_WEIGHT_NAMES};
use crate::models::llama::{LlamaModel, LLAMA_WEIGHT_NAMES};
use crate::models::moe::{MIXTRAL_WEIGHT_NAMES, QWEN3_MOE_WEIGHT_NAMES};
use crate::models::phi3::{Phi3Tensors, PHI3_WEIGHT_NAMES};
use crate::models::{Model, ModelSource};

/// The model implementations, one file each in `models/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `models/llama.rs`: Llama 2/3, Mistral (sliding window), Qwen2/2.5 (qkv bias), Qwen3
    /// (q/k norms), SmolLM.
    Llama,
    /// `models/phi3.rs`: Phi-3 / 3.5 (the Llama decoder with fused qkv and gate/up).
    Phi3,
    /// `models/gemma.rs`: Gemma 2 and Gemma 3 (text).
    Gemma,
    /// `models/llama.rs` with `moe.rs`: Mixtral.
    Mixtral,
    /// `models/llama.rs` with `moe.rs`: Qwen3-MoE (q/k norms, optional dense layers).
    Qwen3Moe,
}

impl Family {
    /// The family's weight naming table.
    pub fn weight_names(self) -> &'static WeightNames {
        match self {
            Self::Llama => &LLAMA_WEIGHT_NAMES,
            Self::Phi3 => &PHI3_WEIGHT_NAMES,
            Self::Gemma => &GEMMA_WEIGHT_NAMES,
            Self::Mixtral => &MIXTRAL_WEIGHT_NAMES,
            Self::Qwen3Moe => &QWEN3_MOE_WEIGHT_NAMES,
        }
    }

    /// Loads the family's model from `source` onto `backend`.
    pub fn load<B: Backend + 'static>(
        self,
        backend: &B,
        source: &ModelSource<'_>,
    ) -> Result<Box<dyn Model<B>>, ModelLoadError> {
        Ok(match self {
            Self::Llama => Box::new(LlamaModel::load(backend, source)?),
            Self::Mixtral | Self::Qwen3Moe => Box::new(LlamaModel::load_from(
                backend,
                source,
                &ExpertTensors::new(source.weights),
            )?),
            Self::Phi3 => Box::new(LlamaModel::load_from(backend, source, &Phi3Tensors::new(source))?),
            Self::Gemma => Box::new(GemmaModel::load(backend, source)?),
        })
    }
}

/// One architecture name a model's files may give, and what runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Architecture {
    /// The name as written.
    pub name: &'static str,
    /// The field it is read from.
    pub source: NameSource,
    /// The model that runs it.
    pub family: Family,
    /// RoPE pair layout of the stored Q/K rows: llama.cpp's converter permutes Llama's Q/K rows
    /// for interleaved rotation, Hugging Face files keep the half-split layout.
    pub rope_style: RopeStyle,
}

/// A name whose files keep Hugging Face's half-split Q/K rows (every Hugging Face name, and
/// the GGUF architectures llama.cpp converts without permuting).
const fn hf(name: &'static str, source: NameSource, family: Family) -> Architecture {
    Architecture {
        name,
        source,
        family,
        rope_style: RopeStyle::HalfSplit,
    }
}

/// Every name Ember runs.
pub const ARCHITECTURES: &[Architecture] = &[
    hf("LlamaForCausalLM", NameSource::HfArchitectures, Family::Llama),
    hf("MistralForCausalLM", NameSource::HfArchitectures, Family::Llama),
    hf("Qwen2ForCausalLM", NameSource::HfArchitectures, Family::Llama),
    hf("Qwen3ForCausalLM", NameSource::HfArchitectures, Family::Llama),
    hf("Phi3ForCausalLM", NameSource::HfArchitectures, Family::Phi3),
    hf("Gemma2ForCausalLM", NameSource::HfArchitectures, Family::Gemma),
    hf("Gemma3ForCausalLM", NameSource::HfArchitectures, Family::Gemma),
    hf("MixtralForCausalLM", NameSource::HfArchitectures, Family::Mixtral),
    hf(
        "Qwen3MoeForCausalLM",
        NameSource::HfArchitectures,
        Family::Qwen3Moe,
    ),
    hf("llama", NameSource::HfModelType, Family::Llama),
    hf("mistral", NameSource::HfModelType, Family::Llama),
    hf("qwen2", NameSource::HfModelType, Family::Llama),
    hf("qwen3", NameSource::HfModelType, Family::Llama),
    hf("phi3", NameSource::HfModelType, Family::Phi3),
    hf("gemma2", NameSource::HfModelType, Family::Gemma),
    hf("gemma3_text", NameSource::HfModelType, Family::Gemma),
    hf("mixtral", NameSource::HfModelType, Family::Mixtral),
    hf("qwen3_moe", NameSource::HfModelType, Family::Qwen3Moe),
    Architecture {
        name: "llama",
        source: NameSource::GgufArchitecture,
        family: Family::Llama,
        rope_style: RopeStyle::Interleaved,
    },
    hf("qwen2", NameSource::GgufArchitecture, Family::Llama),
    hf("qwen3", NameSource::GgufArchitecture, Family::Llama),
    hf("phi3", NameSource::GgufArchitecture, Family::Phi3),
    hf("qwen3moe", NameSource::GgufArchitecture, Family::Qwen3Moe),
    hf("gemma2", NameSource::GgufArchitecture, Family::Gemma),
    hf("gemma3", NameSource::GgufArchitecture, Family::Gemma),
];

/// llama.cpp writes Mixtral as its `llama` architecture with experts (`llama.expert_count`).
const GGUF_LLAMA_WITH_EXPERTS: Architecture = Architecture {
    name: "llama",
    source: NameSource::GgufArchitecture,
    family: Family::Mixtral,
    rope_style: RopeStyle::Interleaved,
};

/// `architecture`, or Mixtral when it is a GGUF `llama` whose config declares experts.
pub fn with_experts(architecture: &'static Architecture, has_experts: bool) -> &'static Architecture {
    match (architecture.source, architecture.family, has_experts) {
        (NameSource::GgufArchitecture, Family::Llama, true) => &GGUF_LLAMA_WITH_EXPERTS,
        _ => architecture,
    }
}

/// The field a name source stands for, as errors spell it.
fn field(source: NameSource) -> &'static str {
    match source {
        NameSource::HfArchitectures => "architectures",
        NameSource::HfModelType => "model_type",
        NameSource::GgufArchitecture => "general.architecture",
    }
}

/// The first of `names` (most specific first) that Ember runs; otherwise an error naming the
/// first one and the supported names of its kind (Hugging Face classes, or GGUF names).
pub fn resolve(names: &[ArchitectureName]) -> Result<&'static Architecture, ModelLoadError> {
    let found = names.iter().find_map(|wanted| {
        ARCHITECTURES
            .iter()
            .find(|a| a.source == wanted.source && a.name == wanted.name)
    });
    if let Some(architecture) = found {
        return Ok(architecture);
    }
    let first = names
        .first()
        .map_or(("(none)", NameSource::HfArchitectures), |n| {
            (n.name.as_str(), n.source)
        });
    let listed = match first.1 {
        NameSource::GgufArchitecture => NameSource::GgufArchitecture,
        NameSource::HfArchitectures | NameSource::HfModelType => NameSource::HfArchitectures,
    };
    let supported: Vec<&str> = ARCHITECTURES
        .iter()
        .filter(|a| a.source == listed)
        .map(|a| a.name)
        .collect();
    Err(ModelLoadError::UnsupportedArchitecture {
        name: first.0.to_string(),
        field: field(first.1),
        supported: supported.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(source: NameSource, name: &str) -> ArchitectureName {
        ArchitectureName {
            source,
            name: name.to_string(),
        }
    }

    #[test]
    fn names_resolve_most_specific_first() {
        let qwen = resolve(&[name(NameSource::HfArchitectures, "Qwen2ForCausalLM")]).unwrap();
        assert_eq!(
            (qwen.family, qwen.rope_style),
            (Family::Llama, RopeStyle::HalfSplit)
        );
        // An unknown class falls back to a known model_type.
        let names = [
            name(NameSource::HfArchitectures, "MistralForSomethingNew"),
            name(NameSource::HfModelType, "mistral"),
        ];
        assert_eq!(resolve(&names).unwrap().name, "mistral");
        let llama = resolve(&[name(NameSource::GgufArchitecture, "llama")]).unwrap();
        assert_eq!(llama.rope_style, RopeStyle::Interleaved);
        assert_eq!(
            resolve(&[name(NameSource::GgufArchitecture, "qwen2")])
                .unwrap()
                .rope_style,
            RopeStyle::HalfSplit
        );
        // A GGUF name is not a Hugging Face class.
        assert!(resolve(&[name(NameSource::HfArchitectures, "llama")]).is_err());
    }

    #[test]
    fn unsupported_names_list_the_supported_ones() {
        let names = [
            name(NameSource::HfArchitectures, "GPT2LMHeadModel"),
            name(NameSource::HfModelType, "gpt2"),
        ];
        let msg = resolve(&names).unwrap_err().to_string();
        assert_eq!(
            msg,
            "unsupported architecture GPT2LMHeadModel (architectures); supported: \
             LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, \
             MixtralForCausalLM, Qwen3MoeForCausalLM"
        );
        let msg = resolve(&[name(NameSource::GgufArchitecture, "gpt2")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "unsupported architecture gpt2 (general.architecture); supported: llama, qwen2, qwen3, phi3, \
             qwen3moe, gemma2, gemma3"
        );
        let msg = resolve(&[name(NameSource::HfModelType, "deepseek_v3")])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("deepseek_v3 (model_type)") && msg.contains("Qwen3MoeForCausalLM"),
            "{msg}"
        );
    }
}
