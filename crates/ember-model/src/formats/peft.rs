//! PEFT LoRA adapter folders: `adapter_config.json` (`r`, `lora_alpha`, `use_rslora`,
//! `target_modules`) and `adapter_model.safetensors` (`<module>.lora_A.weight` `[r, in]`,
//! `<module>.lora_B.weight` `[out, r]`), read into f32 matrices keyed by the module's
//! Hugging Face path. Which modules a model accepts is the model layer's business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::ModelLoadError;
use crate::formats::safetensors::SafetensorsSet;

/// The adapter's config file name inside its folder.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights file name inside its folder.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// One adapted module's two factors, row-major f32.
#[derive(Clone, Debug)]
pub struct PeftFactors {
    /// `lora_A`, `[rank, num_inputs]`.
    pub a: Vec<f32>,
    /// `lora_B`, `[num_outputs, rank]`.
    pub b: Vec<f32>,
    /// Rows of `lora_A`.
    pub rank: usize,
    /// Columns of `lora_A` (the projection's input width).
    pub num_inputs: usize,
    /// Rows of `lora_B` (the projection's output width).
    pub num_outputs: usize,
}

/// A PEFT LoRA adapter read from its folder.
#[derive(Clone, Debug)]
pub struct PeftAdapter {
    /// The folder.
    pub dir: PathBuf,
    /// `r`.
    pub rank: usize,
    /// `lora_alpha`.
    pub lora_alpha: f64,
    /// `use_rslora`: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// The factors of every adapted module, keyed by its path without PEFT's
    /// `base_model.model.` prefix (e.g. `model.layers.0.self_attn.q_proj`).
    pub modules: BTreeMap<String, PeftFactors>,
}

impl PeftAdapter {
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA: what `B A x` is multiplied by.
    pub fn scale(&self) -> f32 {
        let rank = self.rank as f64;
        let divisor = if self.use_rslora { rank.sqrt() } else { rank };
        (self.lora_alpha / divisor) as f32
    }

    /// Reads the adapter in `dir`; a file that cannot be used is a [`ModelLoadError::LoraAdapter`]
    /// naming the file and the key.
    pub fn read(dir: &Path) -> Result<Self, ModelLoadError> {
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelLoadError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| lora_error(&config_path, format!("not valid JSON: {e}")))?;
        let (rank, lora_alpha, use_rslora) = read_config(&config_path, &config)?;
        let modules = read_factors(&dir.join(ADAPTER_WEIGHTS_FILE))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            rank,
            lora_alpha,
            use_rslora,
            modules,
        })
    }
}

/// The error of an unusable adapter file.
pub fn lora_error(path: &Path, detail: String) -> ModelLoadError {
    ModelLoadError::LoraAdapter {
        path: path.to_path_buf(),
        detail,
    }
}

/// `(r, lora_alpha, use_rslora)` of a config, refusing the options Ember does not apply.
fn read_config(path: &Path, config: &Value) -> Result<(usize, f64, bool), ModelLoadError> {
    let rank = match config.get("r").and_then(Value::as_u64) {
        Some(r) if r >= 1 => r as usize,
        _ => {
            return Err(lora_error(
                path,
                format!(
                    "key \"r\" must be an integer >= 1, got {}",
                    shown(config.get("r"))
                ),
            ))
        }
    };
    let lora_alpha = match config.get("lora_alpha") {
        None => 8.0,
        Some(v) => v
            .as_f64()
            .filter(|a| a.is_finite())
            .ok_or_else(|| lora_error(path, format!("key \"lora_alpha\" must be a number, got {v}")))?,
    };
    let use_rslora = flag(path, config, "use_rslora")?;
    for key in ["use_dora", "fan_in_fan_out"] {
        if flag(path, config, key)? {
            return Err(lora_error(
                path,
                format!("key \"{key}\" is true; Ember applies plain LoRA only"),
            ));
        }
    }
    if let Some(bias) = config
        .get("bias")
        .and_then(Value::as_str)
        .filter(|b| *b != "none")
    {
        return Err(lora_error(
            path,
            format!("key \"bias\" is \"{bias}\"; Ember applies adapters without bias (\"none\")"),
        ));
    }
    for key in ["rank_pattern", "alpha_pattern", "modules_to_save"] {
        let used = match config.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Object(map)) => !map.is_empty(),
            Some(Value::Array(list)) => !list.is_empty(),
            Some(_) => true,
        };
        if used {
            return Err(lora_error(
                path,
                format!("key \"{key}\" is set; Ember does not support it"),
            ));
        }
    }
    Ok((rank, lora_alpha, use_rslora))
}

/// A boolean key, false when absent.
fn flag(path: &Path, config: &Value, key: &str) -> Result<bool, ModelLoadError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(lora_error(
            path,
            format!("key \"{key}\" must be true or false, got {v}"),
        )),
    }
}

/// A JSON value for a message ("missing" when absent).
fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "nothing (missing)".to_string(), Value::to_string)
}

/// A stored matrix as f32 values and its shape.
type Matrix = (Vec<f32>, Vec<usize>);

/// Every module's `lora_A` / `lora_B` pair of the weights file, as f32.
fn read_factors(path: &Path) -> Result<BTreeMap<String, PeftFactors>, ModelLoadError> {
    let set = SafetensorsSet::open_file(path)?;
    let mut halves: BTreeMap<String, [Option<Matrix>; 2]> = BTreeMap::new();
    for info in set.tensors() {
        let name = info.name.strip_prefix("base_model.model.").unwrap_or(&info.name);
        let (module, half) = if let Some(module) = name.strip_suffix(".lora_A.weight") {
            (module, 0)
        } else if let Some(module) = name.strip_suffix(".lora_B.weight") {
            (module, 1)
        } else {
            return Err(lora_error(
                path,
                format!(
                    "key \"{}\" is not a lora_A / lora_B weight (embedding adapters and saved \
                     modules are not supported)",
                    info.name
                ),
            ));
        };
        if info.shape.len() != 2 {
            return Err(lora_error(
                path,
                format!(
                    "key \"{}\" has shape {:?}; a 2-D matrix is needed",
                    info.name, info.shape
                ),
            ));
        }
        let view = set.view(info, &info.name)?;
        let mut values = vec![0.0f32; info.shape[0] * info.shape[1]];
        ember_cpu::blocks::dequantize_row(view.dtype, view.bytes, &mut values);
        halves.entry(module.to_string()).or_default()[half] = Some((values, info.shape.clone()));
    }
    if halves.is_empty() {
        return Err(lora_error(path, "holds no lora_A / lora_B weights".to_string()));
    }
    let mut modules = BTreeMap::new();
    for (module, [a, b]) in halves {
        let missing = |which: &str| lora_error(path, format!("key \"{module}.{which}.weight\" is missing"));
        let (a, a_shape) = a.ok_or_else(|| missing("lora_A"))?;
        let (b, b_shape) = b.ok_or_else(|| missing("lora_B"))?;
        if a_shape[0] != b_shape[1] {
            return Err(lora_error(
                path,
                format!(
                    "key \"{module}.lora_B.weight\" has shape {b_shape:?} but lora_A has rank {} \
                     ({a_shape:?})",
                    a_shape[0]
                ),
            ));
        }
        let factors = PeftFactors {
            a,
            b,
            rank: a_shape[0],
            num_inputs: a_shape[1],
            num_outputs: b_shape[0],
        };
        modules.insert(module, factors);
    }
    Ok(modules)
}
