//! Memory-mapped safetensors reading: one file, or a sharded set described by
//! `model.safetensors.index.json`.
//!
//! A safetensors file is an 8-byte little-endian header length, a JSON header mapping
//! tensor names to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the
//! end of the header), then the raw little-endian data.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ember_core::{WeightDType, WeightView};
use memmap2::Mmap;
use serde::Deserialize;

use crate::error::SafetensorsError;

use crate::formats::mapped_file::map_model_file;

/// Refuse headers larger than this (the format's own reference limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Directory entry of one tensor in a safetensors set.
#[derive(Clone, Debug)]
pub struct SafetensorsTensorInfo {
    /// Tensor name as stored, e.g. `model.norm.weight`.
    pub name: String,
    /// Stored dtype string, e.g. "BF16".
    pub dtype: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Index of the shard holding the tensor (into [`SafetensorsSet::paths`]).
    pub shard: usize,
    /// Absolute byte range of the data in the shard.
    pub byte_range: std::ops::Range<usize>,
}

impl SafetensorsTensorInfo {
    /// The stored encoding, when Ember supports it.
    pub fn weight_dtype(&self) -> Option<WeightDType> {
        match self.dtype.as_str() {
            "F32" => Some(WeightDType::F32),
            "F16" => Some(WeightDType::F16),
            "BF16" => Some(WeightDType::BF16),
            _ => None,
        }
    }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// One safetensors file or a sharded set of them, memory-mapped, with every tensor's
/// byte range checked against its file.
pub struct SafetensorsSet {
    shards: Vec<Shard>,
    tensors: Vec<SafetensorsTensorInfo>,
    by_name: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

impl SafetensorsSet {
    /// Opens a single `.safetensors` file.
    pub fn open_file(path: &Path) -> Result<Self, SafetensorsError> {
        let mut set = Self {
            shards: Vec::new(),
            tensors: Vec::new(),
            by_name: HashMap::new(),
        };
        set.add_shard(path)?;
        Ok(set)
    }

    /// Opens the shards listed in a `model.safetensors.index.json` (file names are relative
    /// to the index's folder) and checks that every listed tensor is in its named shard.
    pub fn open_index(index_path: &Path) -> Result<Self, SafetensorsError> {
        let text = std::fs::read_to_string(index_path).map_err(|source| SafetensorsError::Io {
            path: index_path.to_path_buf(),
            source,
        })?;
        let index: IndexFile = serde_json::from_str(&text).map_err(|e| SafetensorsError::Corrupt {
            path: index_path.to_path_buf(),
            detail: format!("invalid index JSON: {e}"),
        })?;
        let dir = index_path.parent().unwrap_or_else(|| Path::new("."));
        let mut set = Self {
            shards: Vec::new(),
            tensors: Vec::new(),
            by_name: HashMap::new(),
        };
        let mut shard_of_file: HashMap<&str, usize> = HashMap::new();
        for file_name in index.weight_map.values() {
            if !is_plain_file_name(file_name) {
                return Err(SafetensorsError::Corrupt {
                    path: index_path.to_path_buf(),
                    detail: format!("weight_map names shard {file_name:?}, which is not a file name in the index's folder"),
                });
            }
            if !shard_of_file.contains_key(file_name.as_str()) {
                shard_of_file.insert(file_name, set.shards.len());
                set.add_shard(&dir.join(file_name))?;
            }
        }
        for (tensor, file_name) in &index.weight_map {
            let shard = shard_of_file[file_name.as_str()];
            let found = set.by_name.get(tensor).map(|&i| set.tensors[i].shard);
            if found != Some(shard) {
                return Err(SafetensorsError::Corrupt {
                    path: index_path.to_path_buf(),
                    detail: format!("weight_map puts tensor {tensor} in {file_name}, but that file lacks it"),
                });
            }
        }
        Ok(set)
    }

    /// Paths of the mapped files, in shard order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// All tensors, in shard order then header order of offsets.
    pub fn tensors(&self) -> &[SafetensorsTensorInfo] {
        &self.tensors
    }

    /// A tensor's directory entry by stored name.
    pub fn tensor_info(&self, name: &str) -> Option<&SafetensorsTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Path of the shard holding `info`.
    pub fn shard_path(&self, info: &SafetensorsTensorInfo) -> &Path {
        &self.shards[info.shard].path
    }

    /// A view of a tensor's bytes; `view_name` becomes the view's name. Fails for
    /// dtypes other than F32, F16 and BF16.
    pub fn view<'a>(
        &'a self,
        info: &'a SafetensorsTensorInfo,
        view_name: &'a str,
    ) -> Result<WeightView<'a>, SafetensorsError> {
        let shard = &self.shards[info.shard];
        let dtype = info
            .weight_dtype()
            .ok_or_else(|| SafetensorsError::UnsupportedDtype {
                tensor: info.name.clone(),
                dtype: info.dtype.clone(),
                path: shard.path.clone(),
            })?;
        let bytes = &shard.mmap[info.byte_range.clone()];
        Ok(WeightView {
            name: view_name,
            dtype,
            shape: &info.shape,
            bytes,
        })
    }

    fn add_shard(&mut self, path: &Path) -> Result<(), SafetensorsError> {
        let mmap = map_model_file(path).map_err(|source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let shard = self.shards.len();
        let entries = parse_header(&mmap).map_err(|detail| SafetensorsError::Corrupt {
            path: path.to_path_buf(),
            detail,
        })?;
        for info in entries {
            let mut info = info;
            info.shard = shard;
            if self.by_name.contains_key(&info.name) {
                return Err(SafetensorsError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("tensor {} appears in more than one shard", info.name),
                });
            }
            self.by_name.insert(info.name.clone(), self.tensors.len());
            self.tensors.push(info);
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            mmap,
        });
        Ok(())
    }
}

/// True when `name` is one plain file name (no folder part, not `.` or `..`), so a shard is
/// always read from the index's own folder.
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    )
}

/// Bytes per element of every dtype the format defines (so sizes can be checked even
/// for tensors Ember will not load).
fn element_bytes(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Parses and checks the header of a whole file's bytes; returns entries with absolute
/// byte ranges (shard index 0).
fn parse_header(bytes: &[u8]) -> Result<Vec<SafetensorsTensorInfo>, String> {
    let len_bytes: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| {
        format!(
            "file is {} bytes, shorter than the 8-byte header length",
            bytes.len()
        )
    })?;
    let header_len = u64::from_le_bytes(len_bytes);
    let available = bytes.len() as u64 - 8;
    if header_len > available || header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "header length {header_len} exceeds the {available} bytes after it"
        ));
    }
    let data_start = 8 + header_len as usize;
    let header_text =
        std::str::from_utf8(&bytes[8..data_start]).map_err(|e| format!("header is not UTF-8: {e}"))?;
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(header_text.trim_end()).map_err(|e| format!("invalid header JSON: {e}"))?;
    let data_len = bytes.len() - data_start;
    let mut infos = Vec::new();
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let entry: HeaderEntry =
            serde_json::from_value(value).map_err(|e| format!("bad header entry for tensor {name}: {e}"))?;
        let [begin, end] = entry.data_offsets;
        if begin > end || end > data_len {
            return Err(format!(
                "tensor {name} has data offsets [{begin}, {end}] outside the {data_len} data bytes"
            ));
        }
        let num_elements = entry.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let expected = element_bytes(&entry.dtype)
            .zip(num_elements)
            .and_then(|(b, n)| b.checked_mul(n));
        if let Some(expected) = expected {
            if expected != end - begin {
                return Err(format!(
                    "tensor {name} ({} {:?}) needs {expected} bytes but its offsets span {}",
                    entry.dtype,
                    entry.shape,
                    end - begin
                ));
            }
        }
        infos.push(SafetensorsTensorInfo {
            name,
            dtype: entry.dtype,
            shape: entry.shape,
            shard: 0,
            byte_range: data_start + begin..data_start + end,
        });
    }
    infos.sort_by_key(|info| info.byte_range.start);
    Ok(infos)
}

#[cfg(test)]
#[path = "safetensors_tests.rs"]
pub(crate) mod tests;
