//! GGUF container parsing: header, metadata key/values and tensor directory,
//! over a memory-mapped file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ember_core::WeightDType;
use memmap2::Mmap;

use crate::error::GgufError;
use crate::formats::mapped_file::map_model_file;

/// Bounds on the header's untrusted counts, sizes and offsets, checked against the file.
#[path = "gguf_layout.rs"]
mod layout;
use layout::{min_value_bytes, MIN_METADATA_ENTRY_BYTES, MIN_TENSOR_INFO_BYTES};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// Any unsigned integer type.
    UInt(u64),
    /// Any signed integer type.
    Int(i64),
    /// float32 or float64.
    Float(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string (invalid bytes replaced).
    String(String),
    /// Array of values.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::UInt(v) => Some(v),
            Self::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Float(v) => Some(v),
            Self::UInt(v) => Some(v as f64),
            Self::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// Directory entry of one tensor.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml type id as stored.
    pub ggml_type: u32,
    /// Dimensions outermost first (GGUF stores innermost first; this is reversed).
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
}

impl GgufTensorInfo {
    /// The stored encoding, when Ember supports it.
    pub fn weight_dtype(&self) -> Option<WeightDType> {
        weight_dtype_of(self.ggml_type)
    }

    /// Number of elements.
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Maps a ggml type id to a supported encoding.
pub fn weight_dtype_of(ggml_type: u32) -> Option<WeightDType> {
    Some(match ggml_type {
        0 => WeightDType::F32,
        1 => WeightDType::F16,
        2 => WeightDType::Q4_0,
        3 => WeightDType::Q4_1,
        8 => WeightDType::Q8_0,
        30 => WeightDType::BF16,
        _ => return None,
    })
}

/// Name of a ggml type id, for error messages.
pub fn ggml_type_name(ggml_type: u32) -> String {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S",
        "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES
        .get(ggml_type as usize)
        .map_or_else(|| format!("type {ggml_type}"), |n| (*n).to_string())
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// All metadata key/values.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor directory in file order.
    pub tensors: Vec<GgufTensorInfo>,
}

impl GgufFile {
    /// Maps and parses `path`; every offset and length is checked against the file size.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let mmap = map_model_file(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = Reader { bytes: &mmap, pos: 0 };
        let corrupt = |detail: String| GgufError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let parsed = reader.parse_header().map_err(corrupt)?;
        let (version, metadata, mut tensors) = parsed;
        let alignment = metadata
            .get("general.alignment")
            .and_then(GgufValue::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(corrupt(format!(
                "general.alignment {alignment} is not a power of two"
            )));
        }
        let data_start = layout::data_start(reader.pos as u64, alignment).map_err(corrupt)?;
        layout::place_tensors(&mut tensors, data_start, alignment, mmap.len() as u64).map_err(corrupt)?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// `general.architecture`, e.g. "llama".
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(GgufValue::as_str)
    }

    /// A tensor's directory entry by name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor of a supported type (empty for unsupported types, or for an
    /// entry that is not from this file).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        let len = tensor_num_bytes(info).unwrap_or(0);
        info.offset
            .checked_add(len)
            .and_then(|end| self.mmap.get(info.offset..end))
            .unwrap_or(&[])
    }
}

fn tensor_num_bytes(info: &GgufTensorInfo) -> Option<usize> {
    info.weight_dtype()?.bytes_for(info.num_elements())
}

type Header = (u32, BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>);

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(len).filter(|&end| end <= self.bytes.len());
        let end =
            end.ok_or_else(|| format!("unexpected end of file at byte {} reading {len} bytes", self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a count of items that take at least `min_item_bytes` each, refusing one the rest
    /// of the file cannot hold (so no count from the header can make Ember allocate).
    fn count(&mut self, what: &str, min_item_bytes: u64) -> Result<usize, String> {
        let at = self.pos;
        let n = self.u64()?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining / min_item_bytes {
            return Err(format!(
                "{what} count {n} at byte {at} needs at least {min_item_bytes} bytes each, but only {remaining} bytes remain"
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.count("string length", 1)?;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn parse_header(&mut self) -> Result<Header, String> {
        if self.take(4)? != GGUF_MAGIC {
            return Err("missing GGUF magic bytes (not a GGUF file)".into());
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!("unsupported GGUF version {version} (supported: 2, 3)"));
        }
        let num_tensors = self.count("tensor", MIN_TENSOR_INFO_BYTES)?;
        let num_kv = self.count("metadata", MIN_METADATA_ENTRY_BYTES)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..num_kv {
            let key = self.string()?;
            let value_type = self.u32()?;
            let value = self.value(value_type, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for _ in 0..num_tensors {
            let name = self.string()?;
            let num_dims = self.u32()?;
            if num_dims > 4 {
                return Err(format!("tensor '{name}' has {num_dims} dimensions (at most 4)"));
            }
            let mut shape = (0..num_dims)
                .map(|_| self.u64().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            shape.reverse();
            let ggml_type = self.u32()?;
            let offset = self.u64()? as usize;
            if shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .is_none()
            {
                return Err(format!("tensor '{name}' has an overflowing shape {shape:?}"));
            }
            tensors.push(GgufTensorInfo {
                name,
                ggml_type,
                shape,
                offset,
            });
        }
        Ok((version, metadata, tensors))
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<GgufValue, String> {
        Ok(match value_type {
            0 => GgufValue::UInt(u64::from(self.array::<1>()?[0])),
            1 => GgufValue::Int(i64::from(self.array::<1>()?[0] as i8)),
            2 => GgufValue::UInt(u64::from(u16::from_le_bytes(self.array()?))),
            3 => GgufValue::Int(i64::from(i16::from_le_bytes(self.array()?))),
            4 => GgufValue::UInt(u64::from(self.u32()?)),
            5 => GgufValue::Int(i64::from(i32::from_le_bytes(self.array()?))),
            6 => GgufValue::Float(f64::from(f32::from_le_bytes(self.array()?))),
            7 => GgufValue::Bool(self.array::<1>()?[0] != 0),
            8 => GgufValue::String(self.string()?),
            9 if depth < 2 => {
                let item_type = self.u32()?;
                let len = self.count("array", min_value_bytes(item_type))?;
                let mut items = Vec::new();
                for _ in 0..len {
                    items.push(self.value(item_type, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::UInt(self.u64()?),
            11 => GgufValue::Int(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::Float(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(format!(
                    "unknown metadata value type {other} at byte {}",
                    self.pos
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_minimal(path: &Path, truncate_by: usize) {
        let mut out = Vec::new();
        out.extend_from_slice(GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes()); // tensors
        out.extend_from_slice(&2u64.to_le_bytes()); // metadata
        let push_str = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        push_str(&mut out, "general.architecture");
        out.extend_from_slice(&8u32.to_le_bytes());
        push_str(&mut out, "llama");
        push_str(&mut out, "llama.block_count");
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&2u32.to_le_bytes());
        push_str(&mut out, "w");
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&3u64.to_le_bytes()); // inner dim
        out.extend_from_slice(&2u64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // F32
        out.extend_from_slice(&0u64.to_le_bytes());
        while out.len() % 32 != 0 {
            out.push(0);
        }
        for v in 0..6 {
            out.extend_from_slice(&(v as f32).to_le_bytes());
        }
        out.truncate(out.len() - truncate_by);
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let path = std::env::temp_dir().join(format!("ember-gguf-ok-{}.gguf", std::process::id()));
        write_minimal(&path, 0);
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.architecture(), Some("llama"));
        assert_eq!(file.get("llama.block_count").and_then(GgufValue::as_u64), Some(2));
        let info = file.tensor("w").unwrap();
        assert_eq!(info.shape, vec![2, 3]);
        assert_eq!(info.weight_dtype(), Some(WeightDType::F32));
        let bytes = file.tensor_bytes(info);
        assert_eq!(f32::from_le_bytes(bytes[20..24].try_into().unwrap()), 5.0);
        std::fs::remove_file(path).ok();
    }

    /// The minimal file with `value` written over the bytes at `offset`.
    fn patched(name: &str, offset: usize, value: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ember-gguf-{name}-{}.gguf", std::process::id()));
        write_minimal(&path, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offset..offset + value.len()].copy_from_slice(value);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn open_error(path: &Path) -> String {
        let err = GgufFile::open(path).err().unwrap().to_string();
        std::fs::remove_file(path).ok();
        err
    }

    #[test]
    fn header_counts_and_offsets_are_checked_against_the_file() {
        // Tensor count 2^28: refused from the file size, before any allocation.
        let err = open_error(&patched("count", 8, &(1u64 << 28).to_le_bytes()));
        assert!(
            err.contains("tensor count 268435456") && err.contains("bytes remain"),
            "{err}"
        );
        // A tensor offset whose start + size wraps past 2^64 (the offset field is at byte 135).
        let wrap = (u64::MAX - 31).to_le_bytes();
        let err = open_error(&patched("wrap", 135, &wrap));
        assert!(
            err.contains("tensor 'w'") && err.contains("beyond the file size"),
            "{err}"
        );
        // An array claiming more items than bytes remain.
        let err = open_error(&patched("name", 102, &u64::MAX.to_le_bytes()));
        assert!(
            err.contains("string length count") && err.contains("bytes remain"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("ember-gguf-bad-{}.gguf", std::process::id()));
        write_minimal(&path, 8);
        let err = GgufFile::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("tensor 'w'") && err.contains("beyond the file size"),
            "{err}"
        );
        std::fs::write(&path, b"GGUF\x03\0\0\0").unwrap();
        let err = GgufFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("unexpected end of file"), "{err}");
        std::fs::remove_file(path).ok();
    }
}
