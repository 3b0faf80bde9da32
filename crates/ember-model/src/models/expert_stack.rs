//! Mixture-of-experts weights stored stacked, one 3-D tensor per projection and layer
//! (llama.cpp's `blk.N.ffn_{gate,up,down}_exps`: `[num_experts, rows, cols]`), cut into the
//! per-expert matrices (`layers.N.experts.E.*`) the MoE block loads; files that store each
//! expert on its own (Hugging Face) pass through.

use crate::error::ModelLoadError;
use crate::formats::weights::{NameScheme, WeightSource};
use crate::models::decoder_tensors::{DecoderTensors, TensorSlice};

/// The canonical per-expert tensors of a model whose experts may be stacked.
pub struct ExpertTensors<'a> {
    weights: &'a WeightSource,
}

impl<'a> ExpertTensors<'a> {
    /// The tensors of `weights`.
    pub fn new(weights: &'a WeightSource) -> Self {
        Self { weights }
    }

    /// The stacked tensor (`layers.N.expert_stack.P`) that would hold the expert tensor `name`
    /// (`layers.N.experts.E.P`), and `E`, when the file is a GGUF file without `name` itself.
    fn stacked(&self, name: &str) -> Option<(String, usize)> {
        if self.weights.scheme() != NameScheme::Gguf || self.weights.contains(name) {
            return None;
        }
        let (layer, rest) = name.strip_prefix("layers.")?.split_once('.')?;
        let (expert, projection) = rest.strip_prefix("experts.")?.split_once('.')?;
        let expert = expert.parse().ok()?;
        Some((format!("layers.{layer}.expert_stack.{projection}"), expert))
    }
}

impl DecoderTensors for ExpertTensors<'_> {
    fn contains(&self, name: &str) -> bool {
        match self.stacked(name) {
            Some((stacked, _)) => self.weights.contains(&stacked),
            None => self.weights.contains(name),
        }
    }

    fn tensor(&self, name: &str) -> Result<TensorSlice<'_>, ModelLoadError> {
        let Some((stacked, expert)) = self.stacked(name) else {
            return Ok(TensorSlice::from_view(self.weights.get(name)?));
        };
        let whole = TensorSlice::from_view(self.weights.get(&stacked)?);
        let &[num_experts, num_rows, num_cols] = whole.shape.as_slice() else {
            return Err(ModelLoadError::BadTensor {
                tensor: stacked,
                detail: format!("shape {:?} is not [experts, rows, columns]", whole.shape),
            });
        };
        if expert >= num_experts {
            return Err(ModelLoadError::BadTensor {
                tensor: stacked,
                detail: format!("{num_experts} experts have no expert {expert}"),
            });
        }
        let matrix = TensorSlice {
            shape: vec![num_experts * num_rows, num_cols],
            ..whole
        };
        matrix.rows(name, expert * num_rows, num_rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::config::tests::write_gguf;
    use crate::formats::gguf::GgufFile;
    use crate::formats::safetensors::tests::temp_dir;
    use crate::models::moe::MIXTRAL_WEIGHT_NAMES;

    fn error(experts: &ExpertTensors<'_>, name: &str) -> String {
        experts
            .tensor(name)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    fn f32_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
        values.flat_map(f32::to_le_bytes).collect()
    }

    #[test]
    fn stacked_experts_are_cut_per_expert() {
        let path = temp_dir("expert-stack").join("moe.gguf");
        write_gguf(
            &path,
            &[],
            &[
                (
                    "blk.0.ffn_gate_exps.weight",
                    0,
                    vec![2, 3, 4],
                    f32_bytes((0..24).map(|v| v as f32)),
                ),
                (
                    "blk.0.ffn_up_exps.weight",
                    0,
                    vec![6, 4],
                    f32_bytes((0..24).map(|v| v as f32)),
                ),
            ],
        );
        let weights = WeightSource::from_gguf(GgufFile::open(&path).expect("open"), &MIXTRAL_WEIGHT_NAMES);
        let experts = ExpertTensors::new(&weights);
        assert!(experts.contains("layers.0.experts.1.gate_proj"));
        assert!(!experts.contains("layers.0.experts.1.down_proj"));
        let second = experts.tensor("layers.0.experts.1.gate_proj").expect("expert 1");
        assert_eq!(
            (second.name.as_str(), second.shape.as_slice()),
            ("layers.0.experts.1.gate_proj", &[3, 4][..])
        );
        assert_eq!(second.bytes, &f32_bytes((12..24).map(|v| v as f32))[..]);
        let msg = error(&experts, "layers.0.experts.2.gate_proj");
        assert!(
            msg.contains("expert_stack.gate_proj") && msg.contains("no expert 2"),
            "{msg}"
        );
        let msg = error(&experts, "layers.0.experts.0.up_proj");
        assert!(msg.contains("is not [experts, rows, columns]"), "{msg}");
        let msg = error(&experts, "layers.0.experts.0.down_proj");
        assert!(msg.contains("blk.0.ffn_down_exps.weight"), "{msg}");
    }
}
