//! A tiny valid Hugging Face folder (config.json, model.safetensors, tokenizer.json; Llama
//! with untied embeddings and llama3 RoPE scaling, f32 / f16 / bf16 weights), and its
//! single-field corruptions: every config value, every safetensors header entry's dtype, dims
//! and offsets, the header length, and the tokenizer's ids, each set to each interesting value.

use half::{bf16, f16};
use serde_json::{json, Map, Value};

use super::mutate::{field_corruptions, Field, FieldKind};
use super::Rng;

/// One tensor of the safetensors file.
#[derive(Clone)]
pub struct Tensor {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// The three files of a folder, as they will be written.
#[derive(Clone)]
pub struct HfFiles {
    /// What was changed ("valid" for none).
    pub description: String,
    /// config.json text.
    pub config: String,
    /// model.safetensors bytes.
    pub safetensors: Vec<u8>,
    /// tokenizer.json text.
    pub tokenizer: String,
}

/// The valid folder's parts.
pub struct HfImage {
    config: Value,
    tensors: Vec<Tensor>,
    tokenizer: Value,
}

const VOCAB: usize = 34;

/// Builds the valid model.
pub fn tiny_llama(rng: &mut Rng) -> HfImage {
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": VOCAB, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": VOCAB - 1,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    });
    let mut tensors = Vec::new();
    let mut add = |name: String, dtype: &'static str, shape: Vec<usize>, center: f32, rng: &mut Rng| {
        let n: usize = shape.iter().product();
        let mut data = Vec::new();
        for _ in 0..n {
            let v = center + (rng.next_f32() - 0.5) * 0.2;
            match dtype {
                "F16" => data.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                "BF16" => data.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
                _ => data.extend_from_slice(&v.to_le_bytes()),
            }
        }
        tensors.push(Tensor {
            name,
            dtype,
            shape,
            data,
        });
    };
    add(
        "model.embed_tokens.weight".into(),
        "F32",
        vec![VOCAB, 32],
        0.0,
        rng,
    );
    add("lm_head.weight".into(), "BF16", vec![VOCAB, 32], 0.0, rng);
    add("model.norm.weight".into(), "F32", vec![32], 1.0, rng);
    for layer in 0..2 {
        let name = |s: &str| format!("model.layers.{layer}.{s}.weight");
        add(name("input_layernorm"), "F32", vec![32], 1.0, rng);
        add(name("post_attention_layernorm"), "F16", vec![32], 1.0, rng);
        add(name("self_attn.q_proj"), "F16", vec![32, 32], 0.0, rng);
        add(name("self_attn.k_proj"), "BF16", vec![16, 32], 0.0, rng);
        add(name("self_attn.v_proj"), "F32", vec![16, 32], 0.0, rng);
        add(name("self_attn.o_proj"), "F16", vec![32, 32], 0.0, rng);
        add(name("mlp.gate_proj"), "BF16", vec![64, 32], 0.0, rng);
        add(name("mlp.up_proj"), "F32", vec![64, 32], 0.0, rng);
        add(name("mlp.down_proj"), "F16", vec![32, 64], 0.0, rng);
    }
    let chars: Vec<String> = "abcdefghijklmnopqrstuvwxyz .,!?Ġ"
        .chars()
        .map(String::from)
        .collect();
    let mut vocab: Map<String, Value> = chars
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), json!(i)))
        .collect();
    vocab.insert("ab".into(), json!(chars.len()));
    let tokenizer = json!({
        "added_tokens": [{"id": VOCAB - 1, "content": "<|end|>", "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]},
    });
    HfImage {
        config,
        tensors,
        tokenizer,
    }
}

/// The safetensors bytes of `header` (tensor entries) followed by `data`.
fn safetensors_bytes(header: &Value, data: &[u8]) -> Vec<u8> {
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    out
}

impl HfImage {
    fn header_and_data(&self) -> (Value, Vec<u8>) {
        let mut header = Map::new();
        let mut data = Vec::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        for t in &self.tensors {
            let begin = data.len();
            data.extend_from_slice(&t.data);
            header.insert(
                t.name.clone(),
                json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [begin, data.len()]}),
            );
        }
        (Value::Object(header), data)
    }

    /// The valid files.
    pub fn valid(&self) -> HfFiles {
        let (header, data) = self.header_and_data();
        HfFiles {
            description: "valid".into(),
            config: self.config.to_string(),
            safetensors: safetensors_bytes(&header, &data),
            tokenizer: self.tokenizer.to_string(),
        }
    }

    /// Every single-field corruption of the three files.
    pub fn field_corruptions(&self) -> Vec<HfFiles> {
        let valid = self.valid();
        let mut out = Vec::new();
        for (path, doc) in json_mutations(&self.config) {
            out.push(HfFiles {
                description: format!("config.json {path}"),
                config: doc.to_string(),
                ..valid.clone()
            });
        }
        for (path, doc) in json_mutations(&self.tokenizer) {
            let description = format!("tokenizer.json {path}");
            out.push(HfFiles {
                description,
                tokenizer: doc.to_string(),
                ..valid.clone()
            });
        }
        let (header, data) = self.header_and_data();
        for (path, doc) in json_mutations(&header) {
            out.push(HfFiles {
                description: format!("safetensors header {path}"),
                safetensors: safetensors_bytes(&doc, &data),
                ..valid.clone()
            });
        }
        let length_field = [Field {
            name: "header length".into(),
            offset: 0,
            kind: FieldKind::U64,
        }];
        for mutant in field_corruptions(&valid.safetensors, &length_field) {
            out.push(HfFiles {
                description: format!("safetensors {}", mutant.description),
                safetensors: mutant.bytes,
                ..valid.clone()
            });
        }
        out
    }
}

/// The interesting JSON values a field may be set to.
fn json_values() -> Vec<Value> {
    vec![
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(3),
        json!(33),
        json!(1_000_000_000u64),
        json!(4_294_967_296u64),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(-0.5),
        json!(1e308),
        json!("x"),
        Value::Null,
        json!(true),
        json!([]),
        json!({}),
    ]
}

/// For every field of `root` (to depth 3; big maps and lists by their first entries): the
/// document with that field set to each interesting value, and with it removed; as (what, doc).
fn json_mutations(root: &Value) -> Vec<(String, Value)> {
    let mut paths = Vec::new();
    collect_paths(root, &mut Vec::new(), &mut paths, 0);
    let mut out = Vec::new();
    for path in paths {
        let shown = path.join(".");
        for value in json_values() {
            let mut doc = root.clone();
            if let Some(slot) = pointer_mut(&mut doc, &path) {
                *slot = value.clone();
                out.push((format!("{shown} = {value}"), doc));
            }
        }
        let mut doc = root.clone();
        if remove(&mut doc, &path) {
            out.push((format!("{shown} removed"), doc));
        }
    }
    out
}

fn collect_paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>, depth: usize) {
    if !prefix.is_empty() {
        out.push(prefix.clone());
    }
    if depth >= 3 {
        return;
    }
    match value {
        Value::Object(map) => {
            // Big maps (the vocabulary) contribute only their first entries.
            for (key, child) in map.iter().take(6) {
                prefix.push(key.clone());
                collect_paths(child, prefix, out, depth + 1);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate().take(3) {
                prefix.push(i.to_string());
                collect_paths(child, prefix, out, depth + 1);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn pointer_mut<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let pointer: String = path
        .iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect();
    doc.pointer_mut(&pointer)
}

fn remove(doc: &mut Value, path: &[String]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match pointer_mut(doc, parent) {
        Some(Value::Object(map)) => map.remove(last).is_some(),
        Some(Value::Array(items)) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}
