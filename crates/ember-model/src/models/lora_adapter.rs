//! A PEFT adapter mapped onto a loaded model's projections: module paths to canonical
//! `(layer, projection)`, fused projections (Phi-3 `qkv_proj`, `gate_up_proj`) cut into the
//! canonical ones as their weights are cut, `lora_B` rows of q/k permuted like the stored Q/K
//! rows of a GGUF base (interleaved RoPE), every shape checked against the model.

use ember_core::RopeStyle;

use crate::error::ModelLoadError;
use crate::formats::config::ModelConfig;
use crate::formats::peft::{lora_error, PeftAdapter, PeftFactors, ADAPTER_WEIGHTS_FILE};
use crate::formats::weights::{NameScheme, TensorName, WeightNames};

/// A projection an adapter can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoraModule {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
}

/// Number of [`LoraModule`] kinds.
pub const NUM_LORA_MODULES: usize = 7;

/// The canonical projections of a (possibly fused) stored part and the rows each takes.
type PartRows = Vec<(LoraModule, usize, usize)>;

/// One projection's factors, ready for a backend (`lora_B` rows cut for a fused projection and
/// permuted for a GGUF base's interleaved RoPE where needed).
#[derive(Clone, Debug)]
pub struct LoraMatrices {
    /// Decoder layer.
    pub layer: usize,
    /// Which projection.
    pub module: LoraModule,
    /// `lora_A` `[rank, num_inputs]` and `lora_B` `[num_outputs, rank]`.
    pub factors: PeftFactors,
}

/// An adapter checked against a model: its scale and every adapted projection.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    pub scale: f32,
    /// The adapter's rank.
    pub rank: usize,
    /// The adapted projections.
    pub matrices: Vec<LoraMatrices>,
}

/// What an adapter is checked and mapped against: the model's family, widths and RoPE layout.
#[derive(Clone, Debug)]
pub struct LoraTargets {
    names: &'static WeightNames,
    num_layers: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    rope_style: RopeStyle,
}

impl LoraTargets {
    /// The projections of a model of `config` whose family names its tensors by `names` and
    /// whose stored Q/K rows are in `rope_style`.
    pub fn new(names: &'static WeightNames, config: &ModelConfig, rope_style: RopeStyle) -> Self {
        Self {
            names,
            num_layers: config.num_layers,
            hidden_size: config.hidden_size,
            intermediate_size: config.intermediate_size,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            rope_style,
        }
    }

    /// `(num_inputs, num_outputs)` of `module`.
    fn widths(&self, module: LoraModule) -> (usize, usize) {
        let (hidden, inter) = (self.hidden_size, self.intermediate_size);
        let q_dim = self.num_heads * self.head_dim;
        let kv_dim = self.num_kv_heads * self.head_dim;
        match module {
            LoraModule::Q => (hidden, q_dim),
            LoraModule::K | LoraModule::V => (hidden, kv_dim),
            LoraModule::O => (q_dim, hidden),
            LoraModule::Gate | LoraModule::Up => (hidden, inter),
            LoraModule::Down => (inter, hidden),
        }
    }

    /// The canonical projections a stored part holds, with their rows in it.
    fn part_rows(&self, part: &str) -> Option<PartRows> {
        let out = |m| self.widths(m).1;
        let one = |m| Some(vec![(m, 0, out(m))]);
        match part {
            "q_proj" => one(LoraModule::Q),
            "k_proj" => one(LoraModule::K),
            "v_proj" => one(LoraModule::V),
            "o_proj" => one(LoraModule::O),
            "gate_proj" => one(LoraModule::Gate),
            "up_proj" => one(LoraModule::Up),
            "down_proj" => one(LoraModule::Down),
            "qkv_proj" => {
                let (q, kv) = (out(LoraModule::Q), out(LoraModule::K));
                Some(vec![
                    (LoraModule::Q, 0, q),
                    (LoraModule::K, q, kv),
                    (LoraModule::V, q + kv, kv),
                ])
            }
            "gate_up_proj" => {
                let inter = out(LoraModule::Gate);
                Some(vec![(LoraModule::Gate, 0, inter), (LoraModule::Up, inter, inter)])
            }
            _ => None,
        }
    }

    /// Maps `peft` onto the model; refuses a rank above `max_lora_rank`, a module the model has
    /// not (or whose adapters Ember does not apply: MoE experts, routers, embeddings) and a
    /// shape that is not the model's, naming the key.
    pub fn adapter(&self, peft: &PeftAdapter, max_lora_rank: usize) -> Result<LoraAdapter, ModelLoadError> {
        let file = peft.dir.join(ADAPTER_WEIGHTS_FILE);
        let config_file = peft.dir.join(crate::formats::peft::ADAPTER_CONFIG_FILE);
        if peft.rank > max_lora_rank {
            return Err(lora_error(
                &config_file,
                format!(
                    "key \"r\" is {}, above max_lora_rank ({max_lora_rank})",
                    peft.rank
                ),
            ));
        }
        let names = self.names;
        let mut matrices = Vec::new();
        for (module, factors) in &peft.modules {
            let key = format!("{module}.lora_A.weight");
            if factors.rank != peft.rank {
                return Err(lora_error(
                    &file,
                    format!(
                        "key \"{key}\" has rank {} but the config's r is {}",
                        factors.rank, peft.rank
                    ),
                ));
            }
            let (layer, parts) = self
                .locate(names, module)
                .map_err(|detail| lora_error(&file, detail))?;
            let fused_rows: usize = parts.iter().map(|p| p.2).sum();
            let num_inputs = self.widths(parts[0].0).0;
            if factors.num_inputs != num_inputs || factors.num_outputs != fused_rows {
                return Err(lora_error(
                    &file,
                    format!(
                        "module \"{module}\": lora_A is [{}, {}] and lora_B [{}, {}], but the model's \
                         projection needs lora_A [r, {num_inputs}] and lora_B [{fused_rows}, r]",
                        factors.rank, factors.num_inputs, factors.num_outputs, factors.rank
                    ),
                ));
            }
            for (module, start, num_rows) in parts {
                matrices.push(self.matrices(layer, module, factors, start, num_rows));
            }
        }
        Ok(LoraAdapter {
            scale: peft.scale(),
            rank: peft.rank,
            matrices,
        })
    }

    /// The layer and canonical projections of a PEFT module path, or why it is refused.
    fn locate(&self, names: &WeightNames, module: &str) -> Result<(usize, PartRows), String> {
        let stored = format!("{module}.weight");
        let refused = |why: &str| format!("module \"{module}\" (key \"{module}.lora_A.weight\"): {why}");
        let Some(name) = TensorName::from_stored(names, &stored, NameScheme::HuggingFace) else {
            return Err(refused(
                "not a decoder-layer projection of this model; adapters apply to q_proj, k_proj, \
                 v_proj, o_proj, gate_proj, up_proj, down_proj (and Phi-3's qkv_proj, gate_up_proj)",
            ));
        };
        let canonical = name.canonical(names);
        if canonical.contains(".experts.") {
            return Err(refused(
                "LoRA on mixture-of-experts expert projections is not supported",
            ));
        }
        let rest = canonical.strip_prefix("layers.").unwrap_or_default();
        let (layer, part) = rest.split_once('.').unwrap_or_default();
        let layer: usize = layer.parse().map_err(|_| refused("not in a decoder layer"))?;
        if layer >= self.num_layers {
            return Err(refused(&format!(
                "layer {layer} is beyond the model's {} layers",
                self.num_layers
            )));
        }
        let parts = self
            .part_rows(part)
            .ok_or_else(|| refused(&format!("\"{part}\" is not a projection adapters apply to")))?;
        Ok((layer, parts))
    }

    /// The factors of canonical `module`: `lora_B` rows `start..start + num_rows`, permuted for a
    /// GGUF base where its Q/K rows are.
    fn matrices(
        &self,
        layer: usize,
        module: LoraModule,
        factors: &PeftFactors,
        start: usize,
        num_rows: usize,
    ) -> LoraMatrices {
        let rank = factors.rank;
        let mut b = factors.b[start * rank..(start + num_rows) * rank].to_vec();
        let num_heads = match module {
            LoraModule::Q => self.num_heads,
            _ => self.num_kv_heads,
        };
        if self.rope_style == RopeStyle::Interleaved && matches!(module, LoraModule::Q | LoraModule::K) {
            b = interleave_rope_rows(&b, num_heads, self.head_dim, rank);
        }
        LoraMatrices {
            layer,
            module,
            factors: PeftFactors {
                a: factors.a.clone(),
                b,
                rank,
                num_inputs: factors.num_inputs,
                num_outputs: num_rows,
            },
        }
    }
}

/// The rows of a `[num_heads * head_dim, cols]` matrix reordered from the Hugging Face
/// half-split RoPE layout to the interleaved one llama.cpp's converter stores: within each head,
/// row `2 i + j` comes from row `j * head_dim / 2 + i`.
pub fn interleave_rope_rows(rows: &[f32], num_heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0f32; rows.len()];
    for head in 0..num_heads {
        for i in 0..half {
            for j in 0..2 {
                let dst = (head * head_dim + 2 * i + j) * cols;
                let src = (head * head_dim + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&rows[src..src + cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_pairs_each_heads_halves() {
        // 2 heads of width 4, one column: head rows [0 1 | 2 3] become [0 2 1 3].
        let rows: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let out = interleave_rope_rows(&rows, 2, 4, 1);
        assert_eq!(out, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        let wide: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = interleave_rope_rows(&wide, 1, 4, 4);
        assert_eq!(&out[4..8], &wide[8..12]);
    }
}
