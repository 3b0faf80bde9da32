//! Weight loading. Matrices become bf16 on the device; GGUF Q8_0/Q4_0/Q4_1 blocks are copied
//! as they are and dequantized by `ember_dequant_bf16` on the device (so the host never holds
//! a dequantized copy). Why not quantized GEMV: prefill and batched decode are GEMMs where
//! cuBLAS bf16 tensor cores win, one weight format keeps every path (cuBLAS, graphs) simple,
//! and the models this engine targets first fit in memory as bf16; a quantized decode GEMV
//! is the follow-up for memory-bound single-stream decode of large quantized models.

use ember_core::{BackendError, BackendResult, WeightDType, WeightView};

use crate::device::Device;
use crate::kernel_args::DequantArgs;
use crate::launch::elementwise_geometry;
use crate::tensor::CudaMatrix;

fn bad(weight: &WeightView<'_>, detail: String) -> BackendError {
    BackendError::BadWeight {
        name: weight.name.to_string(),
        detail,
    }
}

/// Checks a stored tensor's byte length against its shape.
fn check_len(weight: &WeightView<'_>) -> BackendResult<()> {
    let n = weight.num_elements();
    if weight.dtype.bytes_for(n) != Some(weight.bytes.len()) {
        return Err(bad(
            weight,
            format!(
                "{n} elements in {} need {:?} bytes, got {}",
                weight.dtype,
                weight.dtype.bytes_for(n),
                weight.bytes.len()
            ),
        ));
    }
    Ok(())
}

/// Float encodings converted to bf16 bits on the host; `None` for quantized ones.
fn host_bf16_bits(weight: &WeightView<'_>) -> Option<Vec<u16>> {
    let b = weight.bytes;
    match weight.dtype {
        WeightDType::BF16 => Some(
            b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        WeightDType::F16 => Some(
            b.chunks_exact(2)
                .map(|c| half::bf16::from_f32(half::f16::from_le_bytes([c[0], c[1]]).to_f32()).to_bits())
                .collect(),
        ),
        WeightDType::F32 => Some(
            b.chunks_exact(4)
                .map(|c| half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_bits())
                .collect(),
        ),
        WeightDType::Q8_0 | WeightDType::Q4_0 | WeightDType::Q4_1 => None,
    }
}

/// The dequantization kind of `ember_dequant_*` for a GGUF block format.
pub fn dequant_kind(dtype: WeightDType) -> Option<i32> {
    match dtype {
        WeightDType::Q8_0 => Some(0),
        WeightDType::Q4_0 => Some(1),
        WeightDType::Q4_1 => Some(2),
        _ => None,
    }
}

/// Loads a `[rows, cols]` matrix as bf16.
pub fn load_matrix(device: &Device, weight: &WeightView<'_>) -> BackendResult<CudaMatrix> {
    let &[rows, cols] = weight.shape else {
        return Err(bad(
            weight,
            format!("expected a matrix, got shape {:?}", weight.shape),
        ));
    };
    check_len(weight)?;
    if let Some(bits) = host_bf16_bits(weight) {
        return Ok(CudaMatrix {
            data: device.upload(&bits, weight.name)?,
            rows,
            cols,
        });
    }
    let kind = dequant_kind(weight.dtype).ok_or_else(|| bad(weight, "unsupported dtype".into()))?;
    let raw = device.upload(weight.bytes, weight.name)?;
    let data = device.alloc::<u16>(rows * cols, weight.name)?;
    let num_blocks = rows * cols / 32;
    device.kernels().dequant_bf16(
        elementwise_geometry(num_blocks, device.num_sms()),
        &DequantArgs {
            out: device.dev(&data),
            src: device.dev(&raw),
            num_blocks: num_blocks as i64,
            kind,
        },
    )?;
    Ok(CudaMatrix { data, rows, cols })
}

/// A 1-D float weight as f32 on the host (norm scales and biases are stored unquantized).
pub fn load_vector(weight: &WeightView<'_>) -> BackendResult<Vec<f32>> {
    let &[_] = weight.shape else {
        return Err(bad(
            weight,
            format!("expected a 1-D vector, got shape {:?}", weight.shape),
        ));
    };
    check_len(weight)?;
    let b = weight.bytes;
    match weight.dtype {
        WeightDType::F32 => Ok(b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        WeightDType::F16 => Ok(b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        WeightDType::BF16 => Ok(b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        dtype => Err(BackendError::UnsupportedDType {
            name: weight.name.to_string(),
            dtype,
            backend: "cuda",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_weights_convert_on_the_host_and_quantized_go_to_the_device() {
        let bytes: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = WeightView {
            name: "w",
            dtype: WeightDType::F32,
            shape: &[2],
            bytes: &bytes,
        };
        assert_eq!(load_vector(&view).unwrap(), vec![1.0, -2.5]);
        assert_eq!(host_bf16_bits(&view).unwrap(), vec![0x3f80, 0xc020]);
        let q = WeightView {
            name: "q",
            dtype: WeightDType::Q4_1,
            shape: &[32],
            bytes: &[0; 20],
        };
        assert!(host_bf16_bits(&q).is_none());
        assert_eq!(dequant_kind(WeightDType::Q4_1), Some(2));
        assert!(matches!(
            load_vector(&q),
            Err(BackendError::UnsupportedDType { .. })
        ));
        let short = WeightView {
            name: "s",
            dtype: WeightDType::F32,
            shape: &[3],
            bytes: &bytes,
        };
        assert!(load_vector(&short).unwrap_err().to_string().contains("'s'"));
    }
}
