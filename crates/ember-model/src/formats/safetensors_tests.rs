use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A fresh empty folder under the system temp dir, unique per call.
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ember-model-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Writes a safetensors file by hand: `(name, dtype, shape, data)` in order.
pub(crate) fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0;
    for (name, dtype, shape, data) in tensors {
        let entry = serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]});
        header.insert((*name).to_string(), entry);
        offset += data.len();
    }
    let mut header_bytes = serde_json::to_vec(&header).expect("json");
    while !header_bytes.len().is_multiple_of(8) {
        header_bytes.push(b' ');
    }
    let mut out = (header_bytes.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header_bytes);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    std::fs::write(path, out).expect("write safetensors");
}

pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn reads_single_file() {
    let dir = temp_dir("st-single");
    let path = dir.join("model.safetensors");
    let bf16: Vec<u8> = [1.0f32, -2.0]
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    write_safetensors(
        &path,
        &[
            ("a", "F32", vec![2, 3], f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])),
            ("b", "BF16", vec![2], bf16.clone()),
            (
                "c",
                "F16",
                vec![1],
                half::f16::from_f32(0.5).to_le_bytes().to_vec(),
            ),
        ],
    );
    let set = SafetensorsSet::open_file(&path).expect("open");
    assert_eq!(set.tensors().len(), 3);
    let a = set.tensor_info("a").expect("a");
    let view = set.view(a, "canon").expect("view");
    assert_eq!(view.name, "canon");
    assert_eq!(view.dtype, WeightDType::F32);
    assert_eq!(view.shape, &[2, 3]);
    assert_eq!(view.bytes, f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).as_slice());
    let b = set.view(set.tensor_info("b").expect("b"), "b").expect("view b");
    assert_eq!((b.dtype, b.bytes), (WeightDType::BF16, bf16.as_slice()));
    let c = set.view(set.tensor_info("c").expect("c"), "c").expect("view c");
    assert_eq!(c.dtype, WeightDType::F16);
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let dir = temp_dir("st-dtype");
    let path = dir.join("model.safetensors");
    write_safetensors(&path, &[("ids", "I64", vec![2], vec![0; 16])]);
    let set = SafetensorsSet::open_file(&path).expect("open");
    let err = set
        .view(set.tensor_info("ids").expect("ids"), "ids")
        .expect_err("I64");
    let msg = err.to_string();
    assert!(msg.contains("ids") && msg.contains("I64"), "{msg}");
}

#[test]
fn sharded_index() {
    let dir = temp_dir("st-shard");
    write_safetensors(
        &dir.join("model-00001-of-00002.safetensors"),
        &[("x", "F32", vec![1], f32_bytes(&[7.0]))],
    );
    write_safetensors(
        &dir.join("model-00002-of-00002.safetensors"),
        &[("y", "F32", vec![2], f32_bytes(&[8.0, 9.0]))],
    );
    let index = serde_json::json!({
        "metadata": {"total_size": 12},
        "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}
    });
    let index_path = dir.join("model.safetensors.index.json");
    std::fs::write(&index_path, index.to_string()).expect("write index");
    let set = SafetensorsSet::open_index(&index_path).expect("open index");
    assert_eq!(set.paths().count(), 2);
    let y = set.tensor_info("y").expect("y");
    assert!(set.shard_path(y).ends_with("model-00002-of-00002.safetensors"));
    assert_eq!(
        set.view(y, "y").expect("view").bytes,
        f32_bytes(&[8.0, 9.0]).as_slice()
    );

    let bad = serde_json::json!({"weight_map": {"x": "model-00002-of-00002.safetensors"}});
    std::fs::write(&index_path, bad.to_string()).expect("write index");
    let msg = SafetensorsSet::open_index(&index_path)
        .err()
        .expect("mismatch")
        .to_string();
    assert!(
        msg.contains("tensor x") && msg.contains("model-00002-of-00002.safetensors"),
        "{msg}"
    );

    let missing = serde_json::json!({"weight_map": {"x": "nope.safetensors"}});
    std::fs::write(&index_path, missing.to_string()).expect("write index");
    let msg = SafetensorsSet::open_index(&index_path)
        .err()
        .expect("missing shard")
        .to_string();
    assert!(msg.contains("nope.safetensors"), "{msg}");
}

/// The error message of opening `path` after writing `bytes` to it.
fn open_error(path: &std::path::Path, bytes: &[u8], what: &str) -> String {
    std::fs::write(path, bytes).expect("write");
    SafetensorsSet::open_file(path).err().expect(what).to_string()
}

/// A safetensors file: the 8-byte header length, `header`, then `data_len` zero bytes.
fn file_with_header(header: &[u8], data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.resize(out.len() + data_len, 0);
    out
}

#[test]
fn corrupt_files_are_named() {
    let dir = temp_dir("st-corrupt");
    let path = dir.join("bad.safetensors");

    let msg = open_error(&path, &[1, 2, 3], "short");
    assert!(
        msg.contains("bad.safetensors") && msg.contains("corrupt"),
        "{msg}"
    );

    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    let msg = open_error(&path, &huge, "huge header");
    assert!(
        msg.contains("bad.safetensors") && msg.contains("header length"),
        "{msg}"
    );

    let header = br#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#;
    let msg = open_error(&path, &file_with_header(header, 8), "out of bounds");
    assert!(
        msg.contains("bad.safetensors") && msg.contains("tensor w"),
        "{msg}"
    );

    let header = br#"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#;
    let msg = open_error(&path, &file_with_header(header, 8), "size mismatch");
    assert!(msg.contains("needs 12 bytes"), "{msg}");

    let msg = open_error(&path, &file_with_header(b"{oops", 0), "bad json");
    assert!(msg.contains("invalid header JSON"), "{msg}");

    let msg = SafetensorsSet::open_file(&dir.join("absent.safetensors"))
        .err()
        .expect("absent")
        .to_string();
    assert!(msg.contains("absent.safetensors"), "{msg}");
}
