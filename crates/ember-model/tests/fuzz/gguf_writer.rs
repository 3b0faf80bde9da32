//! A tiny valid Llama GGUF file (2 layers, hidden 32, a 34-token byte-level BPE vocabulary,
//! every supported tensor type), written field by field so each header field's position and
//! kind are known to the mutator.

use half::{bf16, f16};

use super::mutate::{Field, FieldKind};
use super::Rng;

/// The file's bytes and the header fields that can be mutated one at a time.
pub struct GgufImage {
    /// The whole file.
    pub bytes: Vec<u8>,
    /// Every scalar and length field of the header, in file order.
    pub fields: Vec<Field>,
    /// Where the tensor data starts.
    pub data_start: usize,
}

struct Writer {
    bytes: Vec<u8>,
    fields: Vec<Field>,
}

impl Writer {
    fn field(&mut self, name: String, kind: FieldKind, raw: &[u8]) {
        self.fields.push(Field {
            name,
            offset: self.bytes.len(),
            kind,
        });
        self.bytes.extend_from_slice(raw);
    }
    fn u32(&mut self, name: String, v: u32) {
        self.field(name, FieldKind::U32, &v.to_le_bytes());
    }
    fn u64(&mut self, name: String, v: u64) {
        self.field(name, FieldKind::U64, &v.to_le_bytes());
    }
    fn string(&mut self, name: String, s: &str) {
        self.u64(format!("{name}.len"), s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
    }
}

enum Value<'a> {
    U32(u32),
    F32(f32),
    Str(&'a str),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

const HIDDEN: usize = 32;
const INTERMEDIATE: usize = 64;
const NUM_HEADS: usize = 4;
const NUM_KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;
const NUM_LAYERS: usize = 2;

/// Token texts: 32 byte-level single characters, one merge result, and an end token.
fn tokens() -> (Vec<String>, Vec<i32>) {
    let mut texts: Vec<String> = "abcdefghijklmnopqrstuvwxyz .,!?Ġ"
        .chars()
        .map(String::from)
        .collect();
    texts.push("ab".into());
    texts.push("<|end|>".into());
    let mut types = vec![1; texts.len()];
    types[texts.len() - 1] = 3; // control
    (texts, types)
}

/// Writes the file.
pub fn tiny_llama(rng: &mut Rng) -> GgufImage {
    let (token_texts, token_types) = tokens();
    let vocab = token_texts.len();
    let end_id = (vocab - 1) as u32;
    let template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|end|>";
    let meta: Vec<(&str, Value<'_>)> = vec![
        ("general.architecture", Value::Str("llama")),
        ("general.alignment", Value::U32(32)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(INTERMEDIATE as u32)),
        ("llama.block_count", Value::U32(NUM_LAYERS as u32)),
        ("llama.attention.head_count", Value::U32(NUM_HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(NUM_KV_HEADS as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.rope.dimension_count", Value::U32(HEAD_DIM as u32)),
        ("llama.context_length", Value::U32(64)),
        ("llama.vocab_size", Value::U32(vocab as u32)),
        ("tokenizer.ggml.model", Value::Str("gpt2")),
        ("tokenizer.ggml.pre", Value::Str("default")),
        ("tokenizer.ggml.tokens", Value::Strs(token_texts)),
        ("tokenizer.ggml.token_type", Value::I32s(token_types)),
        ("tokenizer.ggml.merges", Value::Strs(vec!["a b".into()])),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(end_id)),
        ("tokenizer.chat_template", Value::Str(template)),
    ];
    let q_dim = NUM_HEADS * HEAD_DIM;
    let kv_dim = NUM_KV_HEADS * HEAD_DIM;
    // (name, ggml type, shape outermost first)
    let mut tensors: Vec<(String, u32, [usize; 2])> = vec![
        ("token_embd.weight".into(), 8, [vocab, HIDDEN]),
        ("output_norm.weight".into(), 0, [1, HIDDEN]),
    ];
    for layer in 0..NUM_LAYERS {
        let name = |s: &str| format!("blk.{layer}.{s}.weight");
        tensors.extend([
            (name("attn_norm"), 0, [1, HIDDEN]),
            (name("ffn_norm"), 0, [1, HIDDEN]),
            (name("attn_q"), 2, [q_dim, HIDDEN]),
            (name("attn_k"), 3, [kv_dim, HIDDEN]),
            (name("attn_v"), 1, [kv_dim, HIDDEN]),
            (name("attn_output"), 30, [HIDDEN, q_dim]),
            (name("ffn_gate"), 0, [INTERMEDIATE, HIDDEN]),
            (name("ffn_up"), 8, [INTERMEDIATE, HIDDEN]),
            (name("ffn_down"), 3, [HIDDEN, INTERMEDIATE]),
        ]);
    }
    let mut w = Writer {
        bytes: b"GGUF".to_vec(),
        fields: Vec::new(),
    };
    w.u32("version".into(), 3);
    w.u64("tensor_count".into(), tensors.len() as u64);
    w.u64("metadata_count".into(), meta.len() as u64);
    for (key, value) in &meta {
        w.string(format!("{key}.key"), key);
        write_value(&mut w, key, value);
    }
    let datas: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, ty, shape)| tensor_data(*ty, shape[0] * shape[1], rng))
        .collect();
    let mut offset = 0u64;
    for ((name, ty, shape), data) in tensors.iter().zip(&datas) {
        w.string(format!("{name}.name"), name);
        let dims: Vec<usize> = if shape[0] == 1 {
            vec![shape[1]]
        } else {
            vec![shape[1], shape[0]]
        };
        w.u32(format!("{name}.n_dims"), dims.len() as u32);
        for (i, d) in dims.iter().enumerate() {
            w.u64(format!("{name}.dim{i}"), *d as u64);
        }
        w.u32(format!("{name}.type"), *ty);
        w.u64(format!("{name}.offset"), offset);
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    let mut bytes = w.bytes;
    while !bytes.len().is_multiple_of(32) {
        bytes.push(0);
    }
    let data_start = bytes.len();
    for data in &datas {
        bytes.extend_from_slice(data);
        while !bytes.len().is_multiple_of(32) {
            bytes.push(0);
        }
    }
    GgufImage {
        bytes,
        fields: w.fields,
        data_start,
    }
}

fn write_value(w: &mut Writer, key: &str, value: &Value<'_>) {
    match value {
        Value::U32(v) => {
            w.u32(format!("{key}.type"), 4);
            w.u32(format!("{key}.value"), *v);
        }
        Value::F32(v) => {
            w.u32(format!("{key}.type"), 6);
            w.field(format!("{key}.value"), FieldKind::F32, &v.to_le_bytes());
        }
        Value::Str(s) => {
            w.u32(format!("{key}.type"), 8);
            w.string(format!("{key}.value"), s);
        }
        Value::Strs(items) => {
            w.u32(format!("{key}.type"), 9);
            w.u32(format!("{key}.item_type"), 8);
            w.u64(format!("{key}.count"), items.len() as u64);
            for (i, s) in items.iter().enumerate() {
                if is_sampled(i, items.len()) {
                    w.string(format!("{key}[{i}]"), s);
                } else {
                    w.bytes.extend_from_slice(&(s.len() as u64).to_le_bytes());
                    w.bytes.extend_from_slice(s.as_bytes());
                }
            }
        }
        Value::I32s(items) => {
            w.u32(format!("{key}.type"), 9);
            w.u32(format!("{key}.item_type"), 5);
            w.u64(format!("{key}.count"), items.len() as u64);
            for (i, v) in items.iter().enumerate() {
                if is_sampled(i, items.len()) {
                    w.field(format!("{key}[{i}]"), FieldKind::U32, &v.to_le_bytes());
                } else {
                    w.bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

/// Whether array item `i` of `len` is one whose fields are mutated (the first two and the last;
/// random byte flips reach the others).
fn is_sampled(i: usize, len: usize) -> bool {
    i < 2 || i + 1 == len
}

/// Plausible data for `num_elements` of ggml type `ty`: small weights, sane block scales.
fn tensor_data(ty: u32, num_elements: usize, rng: &mut Rng) -> Vec<u8> {
    let mut small = || (rng.next_f32() - 0.5) * 0.2;
    let mut out = Vec::new();
    match ty {
        // A norm weight is a vector of about 1; an f32 matrix holds small weights.
        0 => {
            let center = if num_elements == HIDDEN { 1.0 } else { 0.0 };
            (0..num_elements).for_each(|_| out.extend_from_slice(&(center + small()).to_le_bytes()));
        }
        1 => (0..num_elements).for_each(|_| out.extend_from_slice(&f16::from_f32(small()).to_le_bytes())),
        30 => (0..num_elements).for_each(|_| out.extend_from_slice(&bf16::from_f32(small()).to_le_bytes())),
        _ => {
            let (scale_bytes, quant_bytes) = match ty {
                2 => (2, 16),
                3 => (4, 16),
                _ => (2, 32),
            };
            for _ in 0..num_elements / 32 {
                out.extend_from_slice(&f16::from_f32(0.01).to_le_bytes());
                if scale_bytes == 4 {
                    out.extend_from_slice(&f16::from_f32(-0.05).to_le_bytes());
                }
                (0..quant_bytes).for_each(|_| out.push((rng.next_u64() & 0xFF) as u8));
            }
        }
    }
    out
}
