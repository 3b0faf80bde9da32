use std::path::Path;

use serde_json::{json, Value};

use super::*;
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::tests::temp_dir;
use crate::reference_env::reference_path;

/// The variable naming the default model's GGUF file, and what it is.
pub(crate) const SMOLLM2_VAR: &str = "EMBER_SMOLLM2_GGUF";
pub(crate) const SMOLLM2_WHAT: &str = "the SmolLM2-135M-Instruct Q4_1 GGUF file";

/// A metadata value for [`write_gguf`].
#[derive(Clone)]
pub(crate) enum Meta<'a> {
    U32(u32),
    F32(f32),
    Str(&'a str),
    Strs(Vec<&'a str>),
    Bools(Vec<bool>),
}

/// Writes a GGUF v3 file: metadata, then tensors `(name, ggml_type, shape outermost first, data)`.
pub(crate) fn write_gguf(
    path: &Path,
    meta: &[(&str, Meta<'_>)],
    tensors: &[(&str, u32, Vec<usize>, Vec<u8>)],
) {
    fn push_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        push_str(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                push_str(&mut out, s);
            }
            Meta::Strs(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    push_str(&mut out, s);
                }
            }
            Meta::Bools(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&7u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                out.extend(items.iter().map(|&b| u8::from(b)));
            }
        }
    }
    let mut offset = 0usize;
    for (name, ggml_type, shape, data) in tensors {
        push_str(&mut out, name);
        out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend_from_slice(&ggml_type.to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += data.len().div_ceil(32) * 32;
    }
    for (_, _, _, data) in tensors {
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend_from_slice(data);
    }
    std::fs::write(path, out).expect("write gguf");
}

fn llama3_json() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": false, "attention_bias": false,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]
    })
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Reference values printed by transformers 5.23 (`LlamaRotaryEmbedding(cfg).inv_freq`).
const LLAMA3_INV_FREQ: [u32; 64] = [
    0x3f800000, 0x3f508ac1, 0x3f29e1c6, 0x3f0a6384, 0x3ee177bc, 0x3eb7ab7d, 0x3e959ee3, 0x3e73c461,
    0x3e4693b0, 0x3e21c3a0, 0x3e03c6a0, 0x3dd6b19c, 0x3daee4ad, 0x3d8e7898, 0x3d681e67, 0x3d3d1684,
    0x3d1a08c8, 0x3cfaf53f, 0x3ccc6f49, 0x3ca68939, 0x3c87a9c3, 0x3c5d06ec, 0x3c340d6d, 0x3c12ac7f,
    0x3beef74f, 0x3bc2aa76, 0x3b9e9402, 0x3b812e35, 0x3b527720, 0x3b0dfd06, 0x3ab3d11d, 0x3a60979e,
    0x3a0995d2, 0x39a3f108, 0x393b2dd2, 0x38c86886, 0x38a3418d, 0x3884fdbf, 0x3858ac81, 0x38308199,
    0x380fc8f8, 0x37ea426f, 0x37bed4f4, 0x379b7475, 0x377d45c3, 0x374e51f5, 0x3728126b, 0x3708ea0f,
    0x36df10c4, 0x36b5b687, 0x369406cb, 0x36712b80, 0x36447610, 0x36200a69, 0x36025f34, 0x35d46808,
    0x35ad07a7, 0x358cf400, 0x3565a54d, 0x353b12c7, 0x351864a7, 0x34f848c2, 0x34ca41b0, 0x34a4c2ff,
];

const SMOLLM2_INV_FREQ: [u32; 32] = [
    0x3f800000, 0x3f32a506, 0x3ef953cf, 0x3eadfcff, 0x3e72d423, 0x3e297409, 0x3dec7fd6, 0x3da50956,
    0x3d6655c2, 0x3d20bc1d, 0x3ce054d2, 0x3c9c8b97, 0x3c5a7bf2, 0x3c187705, 0x3bd4ca15, 0x3b947dae,
    0x3b4f3e38, 0x3b109edb, 0x3ac9d75c, 0x3a8cd9db, 0x3a44948c, 0x3a092e02, 0x39bf74d7, 0x39859aa9,
    0x393a7753, 0x39021f2b, 0x38b59b1b, 0x387d75d4, 0x3830df52, 0x37f6da96, 0x37ac431d, 0x37706b6d,
];

const LINEAR4_INV_FREQ: [u32; 16] = [
    0x3e800000, 0x3e0ff59a, 0x3da1e89b, 0x3d361887, 0x3ccccccd, 0x3c6655c2, 0x3c0186e3, 0x3b91ad39,
    0x3b23d70a, 0x3ab8449c, 0x3a4f3e38, 0x39e91528, 0x3983126f, 0x39136a16, 0x38a5cb60, 0x383a7753,
];

#[test]
fn llama3_config_and_inv_freq_match_transformers() {
    let cfg = ModelConfig::from_hf_json(&llama3_json(), None, "config.json").expect("config");
    assert_eq!((cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), (32, 8, 128));
    assert_eq!(cfg.eos_token_ids, vec![128001, 128008, 128009]);
    assert_eq!(cfg.bos_token_id, Some(128000));
    assert!(!cfg.tie_word_embeddings);
    assert!(matches!(
        cfg.rope_scaling,
        RopeScaling::Llama3 {
            original_max_position_embeddings: 8192,
            ..
        }
    ));
    assert_eq!(
        bits(&cfg.rope_tables(cfg.max_position_embeddings).inv_freq),
        LLAMA3_INV_FREQ.to_vec()
    );
}

#[test]
fn default_and_linear_inv_freq_match_transformers() {
    let mut cfg = ModelConfig::from_hf_json(&llama3_json(), None, "config.json").expect("config");
    cfg.rope_scaling = RopeScaling::None;
    (cfg.head_dim, cfg.rope_theta) = (64, 100000.0);
    assert_eq!(
        bits(&cfg.rope_tables(cfg.max_position_embeddings).inv_freq),
        SMOLLM2_INV_FREQ.to_vec()
    );
    cfg.rope_scaling = RopeScaling::Linear { factor: 4.0 };
    (cfg.head_dim, cfg.rope_theta) = (32, 10000.0);
    assert_eq!(
        bits(&cfg.rope_tables(cfg.max_position_embeddings).inv_freq),
        LINEAR4_INV_FREQ.to_vec()
    );
}

#[test]
fn qwen2_and_mistral_from_dir() {
    let dir = temp_dir("cfg-qwen");
    let qwen = json!({
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": null,
        "max_position_embeddings": 32768, "tie_word_embeddings": true,
        "bos_token_id": 151643, "eos_token_id": 151645
    });
    std::fs::write(dir.join("config.json"), qwen.to_string()).expect("write");
    std::fs::write(
        dir.join("generation_config.json"),
        json!({"eos_token_id": [151645, 151643]}).to_string(),
    )
    .expect("write");
    let json = HfConfigJson::read(&dir).expect("read");
    let class = ArchitectureName {
        source: NameSource::HfArchitectures,
        name: "Qwen2ForCausalLM".into(),
    };
    assert_eq!(json.architecture_names().expect("names"), vec![class]);
    let cfg = ModelConfig::from_hf(&json).expect("qwen2");
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.head_dim, 64);
    assert_eq!(cfg.eos_token_ids, vec![151645, 151643]);
    assert_eq!(cfg.rope_scaling, RopeScaling::None);

    let mistral = json!({
        "model_type": "mistral", "hidden_size": 5120, "head_dim": 128, "intermediate_size": 14336,
        "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 131072, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "eos_token_id": 2
    });
    let cfg = ModelConfig::from_hf_json(&mistral, None, "m.json").expect("mistral");
    assert_eq!((cfg.head_dim, cfg.rope_theta), (128, 1.0e6));
    let json = HfConfigJson {
        config: mistral,
        generation: None,
        source_name: "m.json".into(),
    };
    let model_type = ArchitectureName {
        source: NameSource::HfModelType,
        name: "mistral".into(),
    };
    assert_eq!(json.architecture_names().expect("names"), vec![model_type]);
}

#[test]
fn hf_errors_are_clear() {
    let mut unnamed = llama3_json();
    let fields = unnamed.as_object_mut().expect("object");
    fields.remove("architectures");
    fields.remove("model_type");
    let json = HfConfigJson {
        config: unnamed,
        generation: None,
        source_name: "x/config.json".into(),
    };
    let msg = json.architecture_names().expect_err("unnamed").to_string();
    assert!(
        msg.contains("architectures (or model_type)") && msg.contains("x/config.json"),
        "{msg}"
    );

    let mut bad = llama3_json();
    bad.as_object_mut().expect("object").remove("hidden_size");
    let msg = ModelConfig::from_hf_json(&bad, None, "x/config.json")
        .expect_err("missing")
        .to_string();
    assert!(
        msg.contains("hidden_size") && msg.contains("x/config.json"),
        "{msg}"
    );

    let mut bad = llama3_json();
    bad["rope_scaling"] = json!({"type": "ntk-by-parts", "factor": 4.0});
    let msg = ModelConfig::from_hf_json(&bad, None, "config.json")
        .expect_err("unknown scaling")
        .to_string();
    assert!(
        msg.contains("ntk-by-parts") && msg.contains("yarn, longrope"),
        "{msg}"
    );

    let dir = temp_dir("cfg-missing");
    let msg = HfConfigJson::read(&dir).err().expect("no config").to_string();
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn gguf_config_from_synthetic_file() {
    let dir = temp_dir("cfg-gguf");
    let path = dir.join("tiny.gguf");
    let meta = [
        ("general.architecture", Meta::Str("qwen2")),
        ("qwen2.block_count", Meta::U32(2)),
        ("qwen2.embedding_length", Meta::U32(64)),
        ("qwen2.feed_forward_length", Meta::U32(128)),
        ("qwen2.attention.head_count", Meta::U32(4)),
        ("qwen2.attention.head_count_kv", Meta::U32(2)),
        ("qwen2.attention.layer_norm_rms_epsilon", Meta::F32(1e-6)),
        ("qwen2.rope.freq_base", Meta::F32(1e6)),
        ("qwen2.context_length", Meta::U32(4096)),
        ("tokenizer.ggml.tokens", Meta::Strs(vec!["a", "b", "c"])),
        ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
        ("tokenizer.ggml.eot_token_id", Meta::U32(1)),
    ];
    write_gguf(
        &path,
        &meta,
        &[("output.weight", 0, vec![3, 64], vec![0; 3 * 64 * 4])],
    );
    let file = GgufFile::open(&path).expect("open");
    let names = ModelConfig::gguf_architecture_names(&file).expect("names");
    assert_eq!(names[0].name, "qwen2");
    let cfg = ModelConfig::from_gguf(&file).expect("config");
    assert_eq!(
        (cfg.num_layers, cfg.hidden_size, cfg.head_dim, cfg.vocab_size),
        (2, 64, 16, 3)
    );
    assert_eq!((cfg.rope_theta, cfg.eos_token_ids.clone()), (1e6, vec![2, 1]));
    assert!(!cfg.tie_word_embeddings);

    write_gguf(&path, &[("general.name", Meta::Str("nameless"))], &[]);
    let file = GgufFile::open(&path).expect("open");
    let msg = ModelConfig::gguf_architecture_names(&file)
        .expect_err("no architecture")
        .to_string();
    assert!(msg.contains("general.architecture"), "{msg}");
}

#[test]
fn gguf_config_from_smollm2() {
    let Some(path) = reference_path(SMOLLM2_VAR, SMOLLM2_WHAT) else {
        return;
    };
    let file = GgufFile::open(&path).expect("open SmolLM2");
    let cfg = ModelConfig::from_gguf(&file).expect("config");
    assert_eq!(
        (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads),
        (30, 576, 9, 3)
    );
    assert_eq!(
        (cfg.head_dim, cfg.vocab_size, cfg.intermediate_size),
        (64, 49152, 1536)
    );
    assert_eq!((cfg.rope_theta, cfg.rms_norm_eps), (100000.0, 1e-5));
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.eos_token_ids, vec![2]);
    assert_eq!(
        bits(&cfg.rope_tables(cfg.max_position_embeddings).inv_freq),
        SMOLLM2_INV_FREQ.to_vec()
    );
}

#[test]
fn out_of_range_values_are_refused_by_name() {
    let cases: [(&str, Value, &str); 9] = [
        (
            "num_hidden_layers",
            json!(0),
            "num_layers (block_count / num_hidden_layers) must be at least 1, got 0",
        ),
        (
            "max_position_embeddings",
            json!(0),
            "max_position_embeddings (context_length) must be at least 1",
        ),
        ("vocab_size", json!(0), "vocab_size must be at least 1, got 0"),
        (
            "rope_theta",
            json!(-1.0),
            "rope_theta (rope.freq_base) must be a finite number > 0, got -1",
        ),
        (
            "rope_theta",
            json!(1e300),
            "rope_theta (rope.freq_base) must be a finite number > 0, got inf",
        ),
        (
            "rms_norm_eps",
            json!(-1e-5),
            "rms_norm_eps (layer_norm_rms_epsilon) must be a finite number >= 0",
        ),
        (
            "eos_token_id",
            json!(128256),
            "eos_token_id 128256 is out of range (vocab_size 128256)",
        ),
        (
            "bos_token_id",
            json!(200000),
            "bos_token_id 200000 is out of range",
        ),
        (
            "intermediate_size",
            json!(0),
            "intermediate_size must be at least 1, got 0",
        ),
    ];
    for (field, value, expected) in cases {
        let mut config = llama3_json();
        config[field] = value;
        let err = ModelConfig::from_hf_json(&config, None, "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{field}: {err}");
    }
    let mut config = llama3_json();
    config["rope_scaling"]["high_freq_factor"] = json!(1.0);
    let err = ModelConfig::from_hf_json(&config, None, "config.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("high_freq_factor (1) must be larger than low_freq_factor (1)"),
        "{err}"
    );
}
