//! Phi-3 / 3.5: the Llama decoder with fused projections: `qkv_proj` holds the q, k and v rows
//! and `gate_up_proj` the gate and up rows (llama.cpp's `attn_qkv`, and `ffn_up` twice as
//! tall), cut into the canonical tensors at load; long-rope scaling comes from the config.

use crate::error::ModelLoadError;
use crate::formats::weights::{WeightNames, WeightSource};
use crate::models::blocks::{names, GLOBAL_NAMES};
use crate::models::decoder_tensors::{DecoderTensors, TensorSlice};
use crate::models::ModelSource;

/// The family's stored tensors: the Llama ones, with q/k/v and gate/up fused.
pub static PHI3_WEIGHT_NAMES: WeightNames = WeightNames {
    global: GLOBAL_NAMES,
    layer: &[
        names("input_layernorm", "input_layernorm", "attn_norm"),
        names("post_attention_layernorm", "post_attention_layernorm", "ffn_norm"),
        names("qkv_proj", "self_attn.qkv_proj", "attn_qkv"),
        names("o_proj", "self_attn.o_proj", "attn_output"),
        names("gate_up_proj", "mlp.gate_up_proj", "ffn_up"),
        names("down_proj", "mlp.down_proj", "ffn_down"),
    ],
};

/// The canonical Llama tensors of a Phi-3 file: fused rows cut by the config's sizes.
pub struct Phi3Tensors<'a> {
    weights: &'a WeightSource,
    q_dim: usize,
    kv_dim: usize,
    intermediate_size: usize,
}

impl<'a> Phi3Tensors<'a> {
    /// The tensors of `source`.
    pub fn new(source: &ModelSource<'a>) -> Self {
        let config = source.config;
        Self {
            weights: source.weights,
            q_dim: config.num_heads * config.head_dim,
            kv_dim: config.num_kv_heads * config.head_dim,
            intermediate_size: config.intermediate_size,
        }
    }

    /// The fused tensor holding `name` and the rows it takes there.
    fn fused(&self, name: &str) -> Option<(String, usize, usize)> {
        let (layer, part) = name.rsplit_once('.')?;
        let (q, kv, inter) = (self.q_dim, self.kv_dim, self.intermediate_size);
        let (fused, start, num_rows) = match part {
            "q_proj" => ("qkv_proj", 0, q),
            "k_proj" => ("qkv_proj", q, kv),
            "v_proj" => ("qkv_proj", q + kv, kv),
            "gate_proj" => ("gate_up_proj", 0, inter),
            "up_proj" => ("gate_up_proj", inter, inter),
            _ => return None,
        };
        Some((format!("{layer}.{fused}"), start, num_rows))
    }
}

impl DecoderTensors for Phi3Tensors<'_> {
    fn contains(&self, name: &str) -> bool {
        match self.fused(name) {
            Some((fused, ..)) => self.weights.contains(&fused),
            None => self.weights.contains(name),
        }
    }

    fn tensor(&self, name: &str) -> Result<TensorSlice<'_>, ModelLoadError> {
        let Some((fused, start, num_rows)) = self.fused(name) else {
            return Ok(TensorSlice::from_view(self.weights.get(name)?));
        };
        let whole = TensorSlice::from_view(self.weights.get(&fused)?);
        let fused_rows = match fused.ends_with("qkv_proj") {
            true => self.q_dim + 2 * self.kv_dim,
            false => 2 * self.intermediate_size,
        };
        if whole.shape.first() != Some(&fused_rows) {
            return Err(ModelLoadError::BadTensor {
                tensor: fused,
                detail: format!(
                    "shape {:?} does not have the config's {fused_rows} rows",
                    whole.shape
                ),
            });
        }
        whole.rows(name, start, num_rows)
    }
}
