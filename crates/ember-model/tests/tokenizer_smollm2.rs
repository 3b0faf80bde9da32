//! The default model's tokenizer (SmolLM2-135M-Instruct GGUF: byte-level BPE, pre
//! `smollm`) against ids from llama-cpp-python 0.3.36
//! (`Llama(vocab_only=True).tokenize(text.encode(), add_bos=False, special=True)`).
//!
//! Set `EMBER_SMOLLM2_GGUF` to the `.gguf` file. Without it the test is skipped with a note,
//! or fails when `CI=true`.

use std::time::Instant;

use ember_model::formats::gguf::GgufFile;
use ember_model::text::tokenizer::Tokenizer;

#[path = "../src/reference_env.rs"]
mod reference_env;
use reference_env::reference_path;

const CASES: &[(&str, &[u32])] = &[
    ("Hello, world!", &[19556, 28, 905, 17]),
    ("Café déjà vu — naïve façade", &[51, 1939, 2756, 32564, 90, 16739, 386, 101, 1841, 15486, 46494, 40852]),
    ("I love 🦙 and 🚀🔥!", &[57, 2606, 15107, 116, 243, 284, 15107, 244, 218, 10813, 238, 115, 17]),
    (
        "日本語のテキストと中文文本",
        &[23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 7365, 118, 28589, 29184, 29184, 40993],
    ),
    ("def add(a, b):\n    return a + b  # sum\n", &[1604, 803, 24, 81, 28, 278, 727, 472, 1003, 253, 1232, 278, 216, 907, 2028, 198]),
    ("lots   of    spaces\t\ttabs\n\n\nnewlines", &[92, 1565, 256, 282, 333, 5600, 197, 197, 100, 7366, 1116, 198, 2241, 5110]),
    ("line one\r\nline two\r\n", &[1311, 582, 201, 198, 1311, 827, 2738]),
    (
        "Pi is 3.14159 and 1234567890 items cost $42,000.",
        &[41967, 314, 216, 35, 30, 33, 36, 33, 37, 41, 284, 216, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 3723, 1708, 1885, 36, 34, 28, 32, 32, 32, 30],
    ),
    (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        &[1, 9690, 198, 2683, 359, 5356, 30, 2, 198, 1, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198],
    ),
    ("it's we'll they've I'M", &[269, 506, 392, 3060, 502, 3543, 339, 23, 61]),
    ("   leading and trailing   ", &[256, 2899, 284, 35079, 333]),
];

fn load() -> Option<Tokenizer> {
    let path = reference_path("EMBER_SMOLLM2_GGUF", "the SmolLM2-135M-Instruct Q4_1 GGUF file")?;
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    Some(Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn tokenizer_smollm2_matches_llama_cpp() {
    let Some(tok) = load() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert!(tok.is_special(1) && tok.is_special(2));
    for (text, want) in CASES {
        let got = tok.encode(text, false);
        assert_eq!(&got, want, "encoding {text:?}");
        assert_eq!(tok.decode(&got, false), *text, "round trip {text:?}");
    }
    let chat = CASES[8].0;
    let ids = tok.encode(chat, false);
    assert_eq!(
        tok.decode(&ids, true),
        chat.replace("<|im_start|>", "").replace("<|im_end|>", "")
    );
}

#[test]
fn tokenizer_smollm2_encodes_long_text_quickly() {
    let Some(tok) = load() else { return };
    let para = "The quick brown fox jumps over the lazy dog; naïve café 123,456 — 日本語 🦙.\n  fn main() { println!(\"hi\"); }\n";
    let text = para.repeat(250);
    let start = Instant::now();
    let ids = tok.encode(&text, false);
    let elapsed = start.elapsed();
    println!("{} tokens in {elapsed:?}", ids.len());
    assert!(ids.len() > 10_000);
    assert_eq!(tok.decode(&ids, false), text);
}
