use ember_core::WeightDType;

use super::*;
use crate::formats::config::tests::{write_gguf, Meta};
use crate::formats::safetensors::tests::{f32_bytes, temp_dir, write_safetensors};

/// A small naming table in the style of the model families' (which live in `models/`).
pub(crate) static TEST_NAMES: WeightNames = WeightNames {
    global: &[
        TensorNames {
            canonical: "embed_tokens",
            hf: "model.embed_tokens.weight",
            gguf: "token_embd.weight",
        },
        TensorNames {
            canonical: "norm",
            hf: "model.norm.weight",
            gguf: "output_norm.weight",
        },
        TensorNames {
            canonical: "lm_head",
            hf: "lm_head.weight",
            gguf: "output.weight",
        },
    ],
    layer: &[
        TensorNames {
            canonical: "q_proj",
            hf: "self_attn.q_proj",
            gguf: "attn_q",
        },
        TensorNames {
            canonical: "up_proj",
            hf: "mlp.up_proj",
            gguf: "ffn_up",
        },
        TensorNames {
            canonical: "down_proj",
            hf: "mlp.down_proj",
            gguf: "ffn_down",
        },
    ],
};

#[test]
fn names_map_between_canonical_and_stored_both_ways() {
    for (canonical, hf, gguf) in [
        ("norm", "model.norm.weight", "output_norm.weight"),
        (
            "layers.3.q_proj",
            "model.layers.3.self_attn.q_proj.weight",
            "blk.3.attn_q.weight",
        ),
        (
            "layers.12.up_proj.bias",
            "model.layers.12.mlp.up_proj.bias",
            "blk.12.ffn_up.bias",
        ),
    ] {
        let name = TensorName::parse(&TEST_NAMES, canonical).expect(canonical);
        assert_eq!(name.canonical(&TEST_NAMES), canonical);
        assert_eq!(name.stored_name(&TEST_NAMES, NameScheme::HuggingFace), hf);
        assert_eq!(name.stored_name(&TEST_NAMES, NameScheme::Gguf), gguf);
        assert_eq!(
            TensorName::from_stored(&TEST_NAMES, hf, NameScheme::HuggingFace),
            Some(name)
        );
        assert_eq!(
            TensorName::from_stored(&TEST_NAMES, gguf, NameScheme::Gguf),
            Some(name)
        );
    }
    for bad in [
        "layers.x.q_proj",
        "layers.0.nope",
        "lm_head.bias",
        "layers.0",
        "model.norm.weight",
    ] {
        assert_eq!(TensorName::parse(&TEST_NAMES, bad), None, "{bad}");
    }
    let rotary = "model.layers.0.self_attn.rotary_emb.inv_freq";
    assert_eq!(
        TensorName::from_stored(&TEST_NAMES, rotary, NameScheme::HuggingFace),
        None
    );
    assert_eq!(
        TensorName::from_stored(&TEST_NAMES, "rope_freqs.weight", NameScheme::Gguf),
        None
    );
}

#[test]
fn safetensors_source_by_canonical_name() {
    let dir = temp_dir("weights-st");
    let path = dir.join("model.safetensors");
    write_safetensors(
        &path,
        &[
            (
                "model.embed_tokens.weight",
                "F32",
                vec![2, 2],
                f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
            ),
            (
                "model.layers.0.self_attn.q_proj.bias",
                "F32",
                vec![2],
                f32_bytes(&[5.0, 6.0]),
            ),
            (
                "model.layers.0.self_attn.rotary_emb.inv_freq",
                "F32",
                vec![1],
                f32_bytes(&[1.0]),
            ),
            ("model.layers.0.mlp.up_proj.weight", "I32", vec![1], vec![0; 4]),
        ],
    );
    let source = WeightSource::from_safetensors(SafetensorsSet::open_file(&path).expect("open"), &TEST_NAMES);
    assert_eq!(source.scheme(), NameScheme::HuggingFace);
    assert!(source.gguf().is_none());
    let embed = source.get("embed_tokens").expect("embed");
    assert_eq!(
        (embed.name, embed.dtype, embed.shape),
        ("embed_tokens", WeightDType::F32, &[2usize, 2][..])
    );
    assert_eq!(embed.bytes, f32_bytes(&[1.0, 2.0, 3.0, 4.0]).as_slice());
    assert!(source.contains("layers.0.q_proj.bias") && !source.contains("layers.0.q_proj"));
    assert_eq!(
        source.get("layers.0.q_proj.bias").expect("bias").name,
        "layers.0.q_proj.bias"
    );

    let msg = source.get("lm_head").expect_err("missing").to_string();
    assert!(
        msg.contains("lm_head") && msg.contains("lm_head.weight") && msg.contains("model.safetensors"),
        "{msg}"
    );
    let msg = source.get("layers.0.up_proj").expect_err("I32").to_string();
    assert!(
        msg.contains("model.layers.0.mlp.up_proj.weight") && msg.contains("I32"),
        "{msg}"
    );
    let msg = source.get("layers.0.bogus").expect_err("bad name").to_string();
    assert!(msg.contains("layers.0.bogus"), "{msg}");
    // Only tensors handed out count as used: not the unknown name, not the one that failed.
    assert_eq!(
        source.unread_tensor_names(),
        vec![
            "model.layers.0.self_attn.rotary_emb.inv_freq",
            "model.layers.0.mlp.up_proj.weight"
        ]
    );
}

#[test]
fn gguf_source_and_unsupported_type() {
    let dir = temp_dir("weights-gguf");
    let path = dir.join("tiny.gguf");
    let q8_block: Vec<u8> = std::iter::repeat_n(1u8, 34).collect();
    write_gguf(
        &path,
        &[("general.architecture", Meta::Str("llama"))],
        &[
            ("output_norm.weight", 0, vec![2], f32_bytes(&[0.5, 0.25])),
            ("blk.0.attn_q.weight", 8, vec![1, 32], q8_block.clone()),
            ("blk.0.ffn_down.weight", 14, vec![1, 256], vec![0; 210]),
        ],
    );
    let source = WeightSource::from_gguf(GgufFile::open(&path).expect("open"), &TEST_NAMES);
    assert_eq!(source.scheme(), NameScheme::Gguf);
    assert!(source.gguf().is_some());
    let norm = source.get("norm").expect("norm");
    assert_eq!(
        (norm.name, norm.dtype, norm.bytes),
        ("norm", WeightDType::F32, f32_bytes(&[0.5, 0.25]).as_slice())
    );
    let q = source.get("layers.0.q_proj").expect("q");
    assert_eq!(
        (q.dtype, q.shape, q.bytes),
        (WeightDType::Q8_0, &[1usize, 32][..], q8_block.as_slice())
    );
    let msg = source.get("layers.0.down_proj").expect_err("Q6_K").to_string();
    assert_eq!(
        msg,
        "tensor blk.0.ffn_down.weight has type Q6_K; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1"
    );
    let msg = source.get("embed_tokens").expect_err("missing").to_string();
    assert!(
        msg.contains("embed_tokens") && msg.contains("token_embd.weight") && msg.contains("tiny.gguf"),
        "{msg}"
    );
}
