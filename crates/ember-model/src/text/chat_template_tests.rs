use super::*;
use crate::formats::config::tests::{SMOLLM2_VAR, SMOLLM2_WHAT};
use crate::formats::safetensors::tests::temp_dir;
use crate::reference_env::reference_path;

/// SmolLM2-135M-Instruct's template, as stored in its GGUF `tokenizer.chat_template`.
const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.into(),
        extra: serde_json::Map::new(),
    }
}

/// (messages, add_generation_prompt, expected) with expectations rendered by jinja2 3.1.6
/// with transformers' settings (trim_blocks, lstrip_blocks).
fn smollm2_cases() -> Vec<(Vec<ChatMessage>, bool, &'static str)> {
    vec![
        (
            vec![msg("user", "Hi there")],
            true,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            vec![msg("system", "You are terse."), msg("user", "What is 2+2?"), msg("assistant", "4"), msg("user", "  Caf\u{e9} \u{2615} \n")],
            true,
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n  Caf\u{e9} \u{2615} \n<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            vec![msg("user", "Hello")],
            false,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n",
        ),
    ]
}

#[test]
fn smollm2_template_matches_transformers() {
    let template = match reference_path(SMOLLM2_VAR, SMOLLM2_WHAT) {
        Some(path) => {
            let file = GgufFile::open(&path).expect("open SmolLM2");
            let template = ChatTemplate::from_gguf(&file)
                .expect("compile")
                .expect("has a template");
            assert_eq!(
                (template.bos_token(), template.eos_token()),
                (Some("<|im_start|>"), Some("<|im_end|>"))
            );
            template
        }
        None => ChatTemplate::new(SMOLLM2_TEMPLATE, None, None).expect("compile"),
    };
    for (messages, add_generation_prompt, expected) in smollm2_cases() {
        assert_eq!(
            template.render(&messages, add_generation_prompt).expect("render"),
            expected
        );
    }
}

// Key order of dict literals is not compared: without minijinja's `preserve_order` feature
// maps iterate sorted, where jinja2 keeps insertion order.
#[test]
fn whitespace_control_pycompat_and_tojson_match_jinja2() {
    let source = "{{ bos_token }}\n{% for message in messages %}\n    {% if message['role'].startswith('sys') %}\n[SYS] {{ message['content'].strip() }}\n    {% else %}\n[{{ message['role'] | upper }}] {{ message['content'] | trim }} {{ {\"n\": [loop.index, message['role'], 2.5]} | tojson }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n[ASSISTANT]\n{% endif %}\n";
    let template = ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into())).expect("compile");
    let out = template
        .render(
            &[msg("system", "  Be nice. "), msg("user", " H\u{e9} \"q\" <b> ")],
            true,
        )
        .expect("render");
    assert_eq!(
        out,
        "<s>\n[SYS] Be nice.\n[USER] H\u{e9} \"q\" <b> {\"n\": [2, \"user\", 2.5]}\n[ASSISTANT]\n"
    );
}

#[test]
fn tojson_indent_and_raise_exception() {
    let template = ChatTemplate::new("{{ {'a': [1, 2]} | tojson(indent=2) }}", None, None).expect("compile");
    assert_eq!(
        template.render(&[], false).expect("render"),
        "{\n  \"a\": [\n    1,\n    2\n  ]\n}"
    );
    let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
    let template = ChatTemplate::new(source, None, None).expect("compile");
    assert_eq!(template.render(&[msg("user", "x")], false).expect("render"), "ok");
    let err = template
        .render(&[msg("assistant", "x")], false)
        .expect_err("raise")
        .to_string();
    assert!(err.contains("Conversation must start with user"), "{err}");
    let err = ChatTemplate::new("{% if %}", None, None)
        .expect_err("syntax")
        .to_string();
    assert!(err.contains("syntax"), "{err}");
}

#[test]
fn strftime_formats_utc_dates() {
    // 2024-02-29 13:05:09 UTC, a Thursday.
    let t = 1_709_211_909;
    assert_eq!(strftime_utc("%d %b %Y", t), "29 Feb 2024");
    assert_eq!(
        strftime_utc("%A %B %e, %y %H:%M:%S %I%p %j %%", t),
        "Thursday February 29, 24 13:05:09 01PM 060 %"
    );
    assert_eq!(strftime_utc("%Y-%m-%d %a", 0), "1970-01-01 Thu");
    let template = ChatTemplate::new("{{ strftime_now('%Y') | length }}", None, None).expect("compile");
    assert_eq!(template.render(&[], false).expect("render"), "4");
}

#[test]
fn hf_tokenizer_config_forms() {
    let dir = temp_dir("chat-hf");
    let path = dir.join("tokenizer_config.json");
    let config = serde_json::json!({
        "bos_token": {"content": "<s>", "lstrip": false},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"}
        ]
    });
    std::fs::write(&path, config.to_string()).expect("write");
    let template = ChatTemplate::from_hf_tokenizer_config(&path)
        .expect("read")
        .expect("template");
    assert_eq!(
        template.render(&[msg("user", "hi")], false).expect("render"),
        "<s>hi</s>"
    );

    std::fs::write(
        &path,
        serde_json::json!({"chat_template": "[{{ messages | length }}]"}).to_string(),
    )
    .expect("write");
    let template = ChatTemplate::from_hf_tokenizer_config(&path)
        .expect("read")
        .expect("template");
    assert_eq!(
        template.render(&[msg("user", "hi")], false).expect("render"),
        "[1]"
    );

    std::fs::write(&path, "{}").expect("write");
    assert!(ChatTemplate::from_hf_tokenizer_config(&path)
        .expect("read")
        .is_none());
    std::fs::write(dir.join("chat_template.jinja"), "J{{ messages[0].content }}\n").expect("write");
    let template = ChatTemplate::from_hf_tokenizer_config(&path)
        .expect("read")
        .expect("jinja file");
    assert_eq!(template.render(&[msg("user", "x")], false).expect("render"), "Jx");

    std::fs::write(&path, "{not json").expect("write");
    let err = ChatTemplate::from_hf_tokenizer_config(&path)
        .expect_err("bad json")
        .to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");
}
