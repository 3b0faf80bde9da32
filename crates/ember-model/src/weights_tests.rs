use ember_core::WeightDType;

use super::*;
use crate::config::tests::{write_gguf, Meta, SMOLLM2_VAR, SMOLLM2_WHAT};
use crate::reference_env::reference_path;
use crate::safetensors::tests::{f32_bytes, temp_dir, write_safetensors};

#[test]
fn canonical_names_round_trip() {
    for (canonical, hf, gguf) in [
        ("embed_tokens", "model.embed_tokens.weight", "token_embd.weight"),
        ("norm", "model.norm.weight", "output_norm.weight"),
        ("lm_head", "lm_head.weight", "output.weight"),
        (
            "layers.0.input_layernorm",
            "model.layers.0.input_layernorm.weight",
            "blk.0.attn_norm.weight",
        ),
        (
            "layers.7.post_attention_layernorm",
            "model.layers.7.post_attention_layernorm.weight",
            "blk.7.ffn_norm.weight",
        ),
        (
            "layers.3.q_proj",
            "model.layers.3.self_attn.q_proj.weight",
            "blk.3.attn_q.weight",
        ),
        (
            "layers.3.k_proj.bias",
            "model.layers.3.self_attn.k_proj.bias",
            "blk.3.attn_k.bias",
        ),
        (
            "layers.12.o_proj",
            "model.layers.12.self_attn.o_proj.weight",
            "blk.12.attn_output.weight",
        ),
        (
            "layers.1.gate_proj",
            "model.layers.1.mlp.gate_proj.weight",
            "blk.1.ffn_gate.weight",
        ),
        (
            "layers.1.up_proj",
            "model.layers.1.mlp.up_proj.weight",
            "blk.1.ffn_up.weight",
        ),
        (
            "layers.1.down_proj",
            "model.layers.1.mlp.down_proj.weight",
            "blk.1.ffn_down.weight",
        ),
    ] {
        let name = TensorName::parse(canonical).expect(canonical);
        assert_eq!(name.to_string(), canonical);
        assert_eq!(name.stored_name(NameScheme::HuggingFace), hf);
        assert_eq!(name.stored_name(NameScheme::Gguf), gguf);
        assert_eq!(TensorName::from_stored(hf, NameScheme::HuggingFace), Some(name));
        assert_eq!(TensorName::from_stored(gguf, NameScheme::Gguf), Some(name));
    }
    for bad in [
        "layers.x.q_proj",
        "layers.0.nope",
        "lm_head.bias",
        "layers.0",
        "model.norm.weight",
    ] {
        assert_eq!(TensorName::parse(bad), None, "{bad}");
    }
    assert_eq!(
        TensorName::from_stored(
            "model.layers.0.self_attn.rotary_emb.inv_freq",
            NameScheme::HuggingFace
        ),
        None
    );
    assert_eq!(
        TensorName::from_stored("rope_freqs.weight", NameScheme::Gguf),
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
    let source = WeightSource::from_safetensors(SafetensorsSet::open_file(&path).expect("open"));
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
    let source = WeightSource::from_gguf(GgufFile::open(&path).expect("open"));
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

#[test]
fn smollm2_gguf_tensors() {
    let Some(path) = reference_path(SMOLLM2_VAR, SMOLLM2_WHAT) else {
        return;
    };
    let source = WeightSource::from_gguf(GgufFile::open(&path).expect("open"));
    assert!(!source.contains("lm_head"));
    let embed = source.get("embed_tokens").expect("embed");
    assert_eq!(
        (embed.dtype, embed.shape),
        (WeightDType::Q8_0, &[49152usize, 576][..])
    );
    for i in 0..30 {
        for part in [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
            "input_layernorm",
        ] {
            let view = source.get(&format!("layers.{i}.{part}")).expect("layer tensor");
            assert_eq!(Some(view.bytes.len()), view.dtype.bytes_for(view.num_elements()));
        }
    }
    assert_eq!(source.get("layers.0.k_proj").expect("k").shape, &[192, 576]);
}
