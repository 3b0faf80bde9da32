//! Conformance against llama.cpp's tokenizer test vectors (`models/ggml-vocab-*.gguf` with
//! `.gguf.inp` / `.gguf.out`, as in llama.cpp's `tests/test-tokenizer-0.cpp`: tokenized
//! with `add_special = false`, `parse_special = false`).
//!
//! Set `EMBER_VOCAB_DIR` to the llama.cpp `models/` directory. Without it the test is skipped
//! with a note, or fails when `CI=true`.

use std::path::{Path, PathBuf};

use ember_model::formats::gguf::GgufFile;
use ember_model::text::tokenizer::Tokenizer;

#[path = "../src/reference_env.rs"]
mod reference_env;
use reference_env::reference_path;

/// Vocabularies that must match llama.cpp exactly.
const REQUIRED: &[&str] = &[
    "gpt-2",
    "llama-bpe",
    "llama-spm",
    "qwen2",
    "qwen35",
    "starcoder",
    "deepseek-coder",
    "falcon",
    "mpt",
    "refact",
    "command-r",
    "phi-3",
];

const SEP: &str = "\n__ggml_vocab_test__\n";

fn read_cases(inp: &Path, out: &Path) -> Result<Vec<(String, Vec<u32>)>, String> {
    let raw = std::fs::read(inp).map_err(|e| format!("{}: {e}", inp.display()))?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let expected = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        match raw[pos..].find(SEP) {
            Some(rel) => {
                inputs.push(raw[pos..pos + rel].to_string());
                pos += rel + SEP.len();
            }
            None => {
                inputs.push(raw[pos..].to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = expected
        .lines()
        .map(|l| l.split_whitespace().filter_map(|t| t.parse().ok()).collect())
        .collect();
    if inputs.len() != outputs.len() {
        return Err(format!("{} inputs but {} outputs", inputs.len(), outputs.len()));
    }
    Ok(inputs.into_iter().zip(outputs).collect())
}

fn vocab_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    Some(
        name.strip_prefix("ggml-vocab-")?
            .strip_suffix(".gguf")?
            .to_string(),
    )
}

#[test]
fn tokenizer_llama_cpp_vocab_conformance() {
    let what = "llama.cpp's tokenizer conformance vectors (its models/ directory: ggml-vocab-*.gguf with \
                .gguf.inp/.gguf.out)";
    let Some(dir) = reference_path("EMBER_VOCAB_DIR", what) else {
        return;
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| vocab_name(p).is_some())
        .collect();
    paths.sort();
    let mut failures = Vec::new();
    let mut passed_vocabs = Vec::new();
    for path in &paths {
        let name = vocab_name(path).unwrap_or_default();
        let inp = PathBuf::from(format!("{}.inp", path.display()));
        let out = PathBuf::from(format!("{}.out", path.display()));
        if !inp.exists() || !out.exists() {
            println!("skip {name}: no .inp/.out test vectors");
            continue;
        }
        let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tok = match Tokenizer::from_gguf(&file) {
            Ok(t) => t,
            Err(e) => {
                println!("skip {name}: unsupported ({e})");
                assert!(!REQUIRED.contains(&name.as_str()), "{name} is required but: {e}");
                continue;
            }
        };
        let cases = read_cases(&inp, &out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut ok = 0;
        for (text, want) in &cases {
            let got = tok.encode_with(text, false, false);
            if &got == want {
                ok += 1;
            } else if REQUIRED.contains(&name.as_str()) {
                failures.push(format!("{name}: {text:?}\n  want {want:?}\n  got  {got:?}"));
            } else {
                println!("  ({name} mismatch on {text:?}: want {want:?} got {got:?})");
            }
        }
        let status = if ok == cases.len() { "PASS" } else { "FAIL" };
        println!("{status} {name}: {ok}/{} cases", cases.len());
        if ok == cases.len() {
            passed_vocabs.push(name);
        }
    }
    println!("passing vocabularies: {passed_vocabs:?}");
    for name in REQUIRED {
        assert!(
            paths.iter().any(|p| vocab_name(p).as_deref() == Some(*name)),
            "missing ggml-vocab-{name}.gguf in {}",
            dir.display()
        );
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
