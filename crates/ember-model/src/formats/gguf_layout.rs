//! Checks of a GGUF header's untrusted numbers against the file itself: every count must fit
//! in the bytes that remain, every tensor's byte size follows from its ggml type and shape with
//! checked arithmetic, and every tensor's data lies inside the file at an aligned offset. Nothing
//! is allocated from a count before it passed these checks.

use std::collections::HashSet;

use super::GgufTensorInfo;

/// `(elements per block, bytes per block)` of every ggml type id GGUF files use, as published
/// with the format; `None` for ids no ggml version defines.
pub fn ggml_block_layout(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),
        1 | 25 | 30 => (1, 2),
        2 | 20 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        9 => (32, 40),
        10 => (256, 84),
        11 | 21 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        16 | 35 => (256, 66),
        17 => (256, 74),
        18 => (256, 98),
        19 => (256, 50),
        22 => (256, 82),
        23 => (256, 136),
        24 => (1, 1),
        26 => (1, 4),
        27 | 28 => (1, 8),
        29 => (256, 56),
        34 => (256, 54),
        39 => (32, 17),
        40 => (64, 36),
        41 => (128, 18),
        _ => return None,
    })
}

/// Fewest bytes one metadata value of GGUF type `value_type` occupies (for bounding array
/// lengths by the bytes left); 1 for unknown types, which fail when read.
pub fn min_value_bytes(value_type: u32) -> u64 {
    match value_type {
        2 | 3 => 2,
        4..=6 => 4,
        // A string is at least its 8-byte length; an array its 4-byte type and 8-byte length.
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

/// Fewest bytes of one tensor directory entry: name length, dimension count, type, offset.
pub const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// Fewest bytes of one metadata entry: key length, value type, a one-byte value.
pub const MIN_METADATA_ENTRY_BYTES: u64 = 8 + 4 + 1;

/// Bytes of a tensor's data: whole blocks of its ggml type, computed without overflow.
pub fn tensor_byte_len(info: &GgufTensorInfo) -> Result<u64, String> {
    let (block_elems, block_bytes) = ggml_block_layout(info.ggml_type)
        .ok_or_else(|| format!("tensor '{}' has unknown ggml type {}", info.name, info.ggml_type))?;
    let num_elements = info
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("tensor '{}' has an overflowing shape {:?}", info.name, info.shape))?;
    if !num_elements.is_multiple_of(block_elems) {
        return Err(format!(
            "tensor '{}' has {num_elements} elements, not a whole number of {block_elems}-element blocks",
            info.name
        ));
    }
    (num_elements / block_elems)
        .checked_mul(block_bytes)
        .ok_or_else(|| format!("tensor '{}' is larger than 2^64 bytes", info.name))
}

/// Turns every tensor's relative offset into an absolute one, checking that its data is
/// aligned, lies inside the `file_len` bytes, and that no name repeats.
pub fn place_tensors(
    tensors: &mut [GgufTensorInfo],
    data_start: u64,
    alignment: u64,
    file_len: u64,
) -> Result<(), String> {
    let mut names = HashSet::new();
    for tensor in tensors {
        if !names.insert(tensor.name.clone()) {
            return Err(format!("tensor '{}' appears twice", tensor.name));
        }
        let relative = tensor.offset as u64;
        if !relative.is_multiple_of(alignment) {
            return Err(format!(
                "tensor '{}' has offset {relative}, not a multiple of the alignment {alignment}",
                tensor.name
            ));
        }
        let num_bytes = tensor_byte_len(tensor)?;
        let end = data_start
            .checked_add(relative)
            .and_then(|start| start.checked_add(num_bytes));
        match end {
            Some(end) if end <= file_len => tensor.offset = (data_start + relative) as usize,
            _ => {
                return Err(format!(
                    "tensor '{}' spans {num_bytes} bytes from offset {relative} after the data start {data_start}, \
                     beyond the file size {file_len}",
                    tensor.name
                ))
            }
        }
    }
    Ok(())
}

/// The absolute offset where tensor data begins: the header's end rounded up to `alignment`.
pub fn data_start(header_end: u64, alignment: u64) -> Result<u64, String> {
    header_end
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or_else(|| format!("general.alignment {alignment} puts the data beyond 2^64 bytes"))
}
