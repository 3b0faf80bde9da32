//! Fields of `config.json` that change the math: read as transformers reads them, or refused.

use serde_json::{json, Value};

use super::*;

/// A small config of `architecture` with `extra` fields merged in.
fn config(architecture: &str, extra: Value) -> Value {
    let mut config = json!({
        "architectures": [architecture], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 300, "max_position_embeddings": 4096
    });
    for (key, value) in extra.as_object().expect("an object") {
        config[key] = value.clone();
    }
    config
}

fn window(architecture: &str, extra: Value) -> Option<usize> {
    ModelConfig::from_hf_json(&config(architecture, extra), None, "config.json")
        .expect("config")
        .sliding_window
}

fn error(architecture: &str, extra: Value) -> String {
    ModelConfig::from_hf_json(&config(architecture, extra), None, "config.json")
        .expect_err("refused")
        .to_string()
}

#[test]
fn mistral_slides_when_a_window_is_set() {
    assert_eq!(
        window("MistralForCausalLM", json!({"sliding_window": 1024})),
        Some(1024)
    );
    assert_eq!(
        window("MistralForCausalLM", json!({"sliding_window": null})),
        None
    );
    assert_eq!(window("MistralForCausalLM", json!({})), None);
}

#[test]
fn qwen2_slides_only_with_use_sliding_window_from_max_window_layers_on() {
    let qwen = "Qwen2ForCausalLM";
    assert_eq!(window(qwen, json!({"sliding_window": 1024})), None);
    let on = json!({"sliding_window": 1024, "use_sliding_window": true, "max_window_layers": 2});
    assert_eq!(window(qwen, on.clone()), Some(1024));
    let parsed = ModelConfig::from_hf_json(&config(qwen, on.clone()), None, "config.json").unwrap();
    assert_eq!(parsed.sliding_layers, [false, false, true, true]);
    assert_eq!(
        (parsed.layer_window(1), parsed.layer_window(2)),
        (None, Some(1024))
    );
    assert_eq!(window("Qwen3ForCausalLM", on), Some(1024));
    let no_layer = json!({"sliding_window": 1024, "use_sliding_window": true, "max_window_layers": 4});
    assert_eq!(window(qwen, no_layer), None);
    // transformers' default max_window_layers (28) is past these 4 layers.
    assert_eq!(
        window(qwen, json!({"sliding_window": 1024, "use_sliding_window": true})),
        None
    );
}

#[test]
fn layer_types_decide_when_present_and_llama_has_no_window() {
    let types = |t: &str| json!([t, t, t, t]);
    let sliding = json!({"sliding_window": 512, "layer_types": types("sliding_attention")});
    assert_eq!(window("MistralForCausalLM", sliding), Some(512));
    let full = json!({"sliding_window": 512, "layer_types": types("full_attention")});
    assert_eq!(window("MistralForCausalLM", full), None);
    assert_eq!(window("LlamaForCausalLM", json!({"sliding_window": 512})), None);
    let mixed = json!({"sliding_window": 512, "layer_types":
        ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]});
    let parsed = ModelConfig::from_hf_json(&config("MistralForCausalLM", mixed), None, "c").unwrap();
    assert_eq!(parsed.sliding_layers, [true, false, true, false]);
    let short = json!({"sliding_window": 512, "layer_types": ["sliding_attention"]});
    assert!(error("MistralForCausalLM", short).contains("layer_types has 1 entries for 4 layers"));
    assert!(error("MistralForCausalLM", json!({"sliding_window": 0})).contains("sliding_window must be"));
}

#[test]
fn activations_other_than_silu_are_refused_by_name() {
    for act in ["silu", "swish"] {
        assert!(ModelConfig::from_hf_json(
            &config("LlamaForCausalLM", json!({"hidden_act": act})),
            None,
            "c"
        )
        .is_ok());
    }
    let gelu = ModelConfig::from_hf_json(
        &config("LlamaForCausalLM", json!({"hidden_act": "gelu_pytorch_tanh"})),
        None,
        "c",
    )
    .unwrap();
    assert_eq!(gelu.hidden_act, Activation::GeluTanh);
    let msg = crate::formats::config::refuse_activation(&gelu, "Llama", Activation::Silu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("hidden_act \"gelu_pytorch_tanh\" is not supported by the Llama family"),
        "{msg}"
    );
    let msg = error("Qwen2ForCausalLM", json!({"hidden_act": "relu"}));
    assert!(msg.contains("hidden_act \"relu\""), "{msg}");
    let gemma = json!({"hidden_activation": "gelu_pytorch_tanh", "hidden_act": "silu"});
    let parsed = ModelConfig::from_hf_json(&config("Gemma2ForCausalLM", gemma), None, "c").unwrap();
    assert_eq!(parsed.hidden_act, Activation::GeluTanh);
}

#[test]
fn llama_mlp_bias_is_refused() {
    let msg = error("LlamaForCausalLM", json!({"mlp_bias": true}));
    assert!(msg.starts_with("config.json: mlp_bias true"), "{msg}");
    assert!(
        ModelConfig::from_hf_json(&config("LlamaForCausalLM", json!({"mlp_bias": false})), None, "c").is_ok()
    );
}

#[test]
fn gemma_layers_alternate_and_gemma3_reads_its_local_rope() {
    let layers = |architecture: &str, extra: Value| {
        let mut extra = extra;
        extra["sliding_window"] = json!(64);
        ModelConfig::from_hf_json(&config(architecture, extra), None, "c")
            .unwrap()
            .sliding_layers
    };
    assert_eq!(layers("Gemma2ForCausalLM", json!({})), [true, false, true, false]);
    assert_eq!(
        layers("Gemma3ForCausalLM", json!({"sliding_window_pattern": 2})),
        [true, false, true, false]
    );
    assert_eq!(layers("Gemma3ForCausalLM", json!({})), [true; 4]);
    let nested = json!({"rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        "query_pre_attn_scalar": 144, "final_logit_softcapping": 30.0});
    let parsed = ModelConfig::from_hf_json(&config("Gemma3ForCausalLM", nested), None, "c").unwrap();
    assert_eq!(
        (parsed.rope_theta, parsed.rope_local_theta),
        (1_000_000.0, Some(10_000.0))
    );
    assert_eq!(parsed.rope_scaling, RopeScaling::Linear { factor: 8.0 });
    assert_eq!(
        (parsed.query_pre_attn_scalar, parsed.final_logit_softcapping),
        (Some(144.0), Some(30.0))
    );
    let flat = json!({"rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0});
    let parsed = ModelConfig::from_hf_json(&config("Gemma3ForCausalLM", flat), None, "c").unwrap();
    assert_eq!(parsed.rope_local_theta, Some(10_000.0));
}

#[test]
fn yarn_and_long_rope_read_their_fields_and_defaults() {
    let parse = |extra: Value| ModelConfig::from_hf_json(&config("LlamaForCausalLM", extra), None, "c");
    let yarn = parse(json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 1024}}))
    .unwrap();
    let RopeScaling::Yarn {
        beta_fast,
        beta_slow,
        truncate,
        attention_factor,
        ..
    } = yarn.rope_scaling
    else {
        panic!("{:?}", yarn.rope_scaling)
    };
    assert_eq!((beta_fast, beta_slow, truncate), (32.0, 1.0, true));
    assert!((attention_factor - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
    // Phi-3's form: "su" with the original context at the top level.
    let long = parse(
        json!({"original_max_position_embeddings": 1024, "rope_scaling": {"type": "su",
        "short_factor": vec![1.0; 8], "long_factor": vec![2.0; 8]}}),
    )
    .unwrap();
    let RopeScaling::LongRope {
        original_max_position_embeddings,
        attention_factor,
        ..
    } = &long.rope_scaling
    else {
        panic!("{:?}", long.rope_scaling)
    };
    assert_eq!(*original_max_position_embeddings, 1024);
    // factor = 4096 / 1024: sqrt(1 + ln 4 / ln 1024).
    assert!((attention_factor - (1.0 + 4f32.ln() / 1024f32.ln()).sqrt()).abs() < 1e-6);
    let short = long.rope_tables(1024);
    let stretched = long.rope_tables(1025);
    assert_eq!(short.inv_freq.len(), 8);
    assert!(short
        .inv_freq
        .iter()
        .zip(&stretched.inv_freq)
        .all(|(s, l)| (s / l - 2.0).abs() < 1e-6));
}

#[test]
fn rope_settings_that_cannot_be_honoured_are_refused() {
    let short = json!({"original_max_position_embeddings": 1024, "rope_scaling": {"type": "longrope",
        "short_factor": [1.0], "long_factor": vec![1.0; 8]}});
    assert!(error("Phi3ForCausalLM", short).contains("short_factor has 1 factors, expected head_dim / 2 = 8"));
    let dynamic = json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}});
    assert!(error("LlamaForCausalLM", dynamic).contains("\"dynamic\" is not supported"));
    let partial = json!({"partial_rotary_factor": 0.5});
    assert!(error("Phi3ForCausalLM", partial).contains("partial_rotary_factor 0.5 is not supported"));
    let missing = json!({"rope_scaling": {"rope_type": "longrope", "long_factor": vec![1.0; 8]}});
    assert!(error("Phi3ForCausalLM", missing).contains("rope_scaling.short_factor"));
}
