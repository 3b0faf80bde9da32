//! Gemma's and the mixture-of-experts families' fields from GGUF metadata, as llama.cpp reads
//! them.

use crate::formats::config::tests::{write_gguf, Meta};
use crate::formats::config::{Activation, ModelConfig};
use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::tests::temp_dir;

/// The config of a file of architecture `arch` with `num_layers` layers, `extra` metadata and
/// `tensors` (name only, a 1-element F32 each).
fn config(
    arch: &str,
    num_layers: u32,
    extra: Vec<(String, Meta<'_>)>,
    tensors: &[String],
) -> Result<ModelConfig, String> {
    let dir = temp_dir(&format!("gguf-config-{arch}"));
    let path = dir.join("model.gguf");
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta: Vec<(String, Meta<'_>)> = vec![
        ("general.architecture".into(), Meta::Str(arch)),
        (key("block_count"), Meta::U32(num_layers)),
        (key("embedding_length"), Meta::U32(64)),
        (key("feed_forward_length"), Meta::U32(128)),
        (key("attention.head_count"), Meta::U32(2)),
        (key("attention.key_length"), Meta::U32(16)),
        (key("attention.layer_norm_rms_epsilon"), Meta::F32(1e-6)),
        ("tokenizer.ggml.tokens".into(), Meta::Strs(vec!["a", "b"])),
    ];
    meta.extend(extra);
    let meta: Vec<(&str, Meta<'_>)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tensors: Vec<(&str, u32, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|n| (n.as_str(), 0, vec![1], vec![0; 4]))
        .collect();
    write_gguf(&path, &meta, &tensors);
    let file = GgufFile::open(&path).map_err(|e| e.to_string())?;
    ModelConfig::from_gguf(&file).map_err(|e| e.to_string())
}

#[test]
fn gemma2_takes_llama_cpp_defaults() {
    let cfg = config("gemma2", 4, Vec::new(), &[]).expect("config");
    assert_eq!(cfg.hidden_act, Activation::GeluTanh);
    assert_eq!(cfg.sliding_window, Some(4096));
    assert_eq!(cfg.sliding_layers, [true, false, true, false]);
    assert_eq!(
        (cfg.attn_logit_softcapping, cfg.final_logit_softcapping),
        (Some(50.0), Some(30.0))
    );
    assert_eq!(
        (cfg.query_pre_attn_scalar, cfg.rope_local_theta),
        (Some(16.0), None)
    );
    // The 27B model (46 layers) scales queries by hidden_size / heads.
    let cfg = config("gemma2", 46, Vec::new(), &[]).expect("config");
    assert_eq!(cfg.query_pre_attn_scalar, Some(32.0));
}

#[test]
fn gemma3_reads_window_flags_period_and_local_base() {
    let extra = vec![
        ("gemma3.attention.sliding_window".to_string(), Meta::U32(24)),
        (
            "gemma3.attention.sliding_window_pattern".to_string(),
            Meta::Bools(vec![true, false, true]),
        ),
        ("gemma3.rope.freq_base_swa".to_string(), Meta::F32(500.0)),
    ];
    let cfg = config("gemma3", 3, extra, &[]).expect("config");
    assert_eq!(
        (cfg.sliding_window, cfg.sliding_layers.clone()),
        (Some(24), vec![true, false, true])
    );
    assert_eq!(cfg.rope_local_theta, Some(500.0));
    assert_eq!(
        (cfg.attn_logit_softcapping, cfg.final_logit_softcapping),
        (None, None)
    );
    let extra = vec![
        ("gemma3.attention.sliding_window".to_string(), Meta::U32(24)),
        (
            "gemma3.attention.sliding_window_pattern".to_string(),
            Meta::U32(3),
        ),
    ];
    let cfg = config("gemma3", 6, extra, &[]).expect("config");
    assert_eq!(cfg.sliding_layers, [true, true, false, true, true, false]);
    assert_eq!(cfg.rope_local_theta, Some(10_000.0));
    // Without a window no layer slides.
    let cfg = config("gemma3", 6, Vec::new(), &[]).expect("config");
    assert_eq!(cfg.sliding_window, None);
    let extra = vec![
        ("gemma3.attention.sliding_window".to_string(), Meta::U32(24)),
        (
            "gemma3.attention.sliding_window_pattern".to_string(),
            Meta::Bools(vec![true]),
        ),
    ];
    let msg = config("gemma3", 2, extra, &[]).expect_err("short pattern");
    assert!(
        msg.contains("gemma3.attention.sliding_window_pattern has 1 entries for 2 layers"),
        "{msg}"
    );
}

#[test]
fn experts_come_from_counts_and_routers() {
    let extra = vec![
        ("qwen3moe.expert_count".to_string(), Meta::U32(8)),
        ("qwen3moe.expert_used_count".to_string(), Meta::U32(2)),
        ("qwen3moe.expert_feed_forward_length".to_string(), Meta::U32(24)),
    ];
    let cfg = config(
        "qwen3moe",
        3,
        extra,
        &[
            "blk.0.ffn_gate_inp.weight".into(),
            "blk.2.ffn_gate_inp.weight".into(),
        ],
    )
    .expect("config");
    let moe = cfg.moe.expect("experts");
    assert_eq!(
        (
            moe.num_experts,
            moe.num_experts_per_tok,
            moe.expert_intermediate_size
        ),
        (8, 2, 24)
    );
    assert!(moe.norm_topk_prob);
    assert_eq!(moe.sparse_layers, [true, false, true]);
    // Mixtral: llama with experts sized by feed_forward_length.
    let extra = vec![
        ("llama.expert_count".to_string(), Meta::U32(4)),
        ("llama.expert_used_count".to_string(), Meta::U32(5)),
    ];
    let msg = config("llama", 1, extra, &[]).expect_err("too many used");
    assert!(
        msg.contains("llama.expert_used_count (5) must be between 1 and the 4 experts"),
        "{msg}"
    );
    let extra = vec![
        ("llama.expert_count".to_string(), Meta::U32(4)),
        ("llama.expert_used_count".to_string(), Meta::U32(2)),
        ("llama.expert_shared_count".to_string(), Meta::U32(1)),
    ];
    let msg = config("llama", 1, extra, &[]).expect_err("shared experts");
    assert!(msg.contains("llama.expert_shared_count"), "{msg}");
    let extra = vec![("llama.expert_count".to_string(), Meta::U32(4))];
    let msg = config("llama", 1, extra, &[]).expect_err("no used count");
    assert!(msg.contains("llama.expert_used_count"), "{msg}");
}
