//! Weight loading. Matrices become bf16 on the device; GGUF quantized blocks (the 32-element
//! formats and the K-quants) are copied as they are and dequantized by `ember_dequant_bf16` on
//! the device (so the host never holds a dequantized copy). Why not quantized GEMV: prefill and
//! batched decode are GEMMs where cuBLAS bf16 tensor cores win, one weight format keeps every path (cuBLAS, graphs) simple,
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
        _ => None,
    }
}

/// The dequantization kind of `ember_dequant_*` for a GGUF block format (cuda/dequant.cu).
pub fn dequant_kind(dtype: WeightDType) -> Option<i32> {
    Some(match dtype {
        WeightDType::Q8_0 => 0,
        WeightDType::Q4_0 => 1,
        WeightDType::Q4_1 => 2,
        WeightDType::Q5_0 => 3,
        WeightDType::Q5_1 => 4,
        WeightDType::IQ4_NL => 5,
        WeightDType::Q2_K => 6,
        WeightDType::Q3_K => 7,
        WeightDType::Q4_K => 8,
        WeightDType::Q5_K => 9,
        WeightDType::Q6_K => 10,
        WeightDType::Q8_K => 11,
        WeightDType::F32 | WeightDType::F16 | WeightDType::BF16 => return None,
    })
}

/// One `ember_dequant_*` launch: the kind, the number of 32-element output chunks (one
/// thread each; a K-quant super-block is 8 chunks) and the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DequantPlan {
    /// `kind` argument.
    pub kind: i32,
    /// `num_blocks` argument: output elements / 32.
    pub num_chunks: usize,
    /// Launch shape.
    pub geometry: crate::launch::Geometry,
}

/// The launch that dequantizes `num_elements` elements of `dtype` (whole blocks) on a device
/// with `num_sms` multiprocessors; `None` for float formats or a partial block.
pub fn dequant_plan(dtype: WeightDType, num_elements: usize, num_sms: usize) -> Option<DequantPlan> {
    let kind = dequant_kind(dtype)?;
    dtype.bytes_for(num_elements)?;
    let num_chunks = num_elements / 32;
    Some(DequantPlan {
        kind,
        num_chunks,
        geometry: elementwise_geometry(num_chunks, num_sms),
    })
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
    let plan = dequant_plan(weight.dtype, rows * cols, device.num_sms()).ok_or_else(|| {
        bad(
            weight,
            format!("{} is not a whole number of blocks", weight.dtype),
        )
    })?;
    let raw = device.upload(weight.bytes, weight.name)?;
    let data = device.alloc::<u16>(rows * cols, weight.name)?;
    device.kernels().dequant_bf16(
        plan.geometry,
        &DequantArgs {
            out: device.dev(&data),
            src: device.dev(&raw),
            num_blocks: plan.num_chunks as i64,
            kind: plan.kind,
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
        assert_eq!(dequant_kind(WeightDType::BF16), None);
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

    #[test]
    fn dequant_launches_cover_every_quantized_format() {
        let quantized: Vec<WeightDType> = WeightDType::ALL
            .into_iter()
            .filter(|t| t.is_quantized())
            .collect();
        let mut kinds: Vec<i32> = quantized.iter().map(|&t| dequant_kind(t).unwrap()).collect();
        kinds.sort_unstable();
        assert_eq!(kinds, (0..12).collect::<Vec<_>>(), "one kernel kind per format");
        // A [576, 1536] Q4_K matrix: 3456 super-blocks, 8 chunks of 32 each.
        let plan = dequant_plan(WeightDType::Q4_K, 576 * 1536, 132).unwrap();
        assert_eq!((plan.kind, plan.num_chunks), (8, 576 * 1536 / 32));
        assert_eq!(plan.geometry, elementwise_geometry(576 * 1536 / 32, 132));
        assert!(
            dequant_plan(WeightDType::Q6_K, 576, 132).is_none(),
            "partial super-block"
        );
        assert!(dequant_plan(WeightDType::F16, 64, 132).is_none());
    }
}
