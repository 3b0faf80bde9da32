//! GPU sampling of a step (`cuda/sampling.cu`): the bf16 logits rows become f32, each row is
//! sampled with its own parameters and seeded draw, and only the token ids come back to the host
//! (rows sampled here never ask for logprobs: `ember_core::device_sample_row`).

use ember_core::{BackendError, BackendResult, DeviceSampleRow};

use crate::device::Device;
use crate::kernel_args::{SampleArgs, ToF32Args};
use crate::launch::{elementwise_geometry, sampling_geometry};
use crate::tensor::CudaTensor;

/// `u32` words of one `struct SampleParams` (`#[repr(C)]` layout of `cuda/sampling.cu`:
/// temperature, top_p, min_p as f32, top_k as i32, then seed and token_index as u64).
pub const SAMPLE_PARAMS_WORDS: usize = 8;

/// The rows as an array of `SampleParams`, little-endian.
pub fn pack_sample_params(rows: &[DeviceSampleRow]) -> Vec<u32> {
    let mut words = Vec::with_capacity(rows.len() * SAMPLE_PARAMS_WORDS);
    for r in rows {
        words.extend([
            r.temperature.to_bits(),
            r.top_p.to_bits(),
            r.min_p.to_bits(),
            r.top_k as u32,
            r.seed as u32,
            (r.seed >> 32) as u32,
            r.token_index as u32,
            (r.token_index >> 32) as u32,
        ]);
    }
    words
}

/// Samples one token per row of `logits` (`[rows.len(), vocab]`); returns the token ids.
pub fn sample(d: &Device, logits: &CudaTensor, rows: &[DeviceSampleRow]) -> BackendResult<Vec<u32>> {
    if rows.len() != logits.rows {
        return Err(BackendError::Device(format!(
            "sample: {} parameter rows for {} logits rows",
            rows.len(),
            logits.rows
        )));
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (n, vocab) = (rows.len(), logits.cols);
    let elements = n * vocab;
    let f32_logits = d.alloc_uninit::<f32>(elements, "sampling logits")?;
    d.kernels().to_f32_bf16(
        elementwise_geometry(elements, d.num_sms()),
        &ToF32Args {
            out: d.dev(&f32_logits),
            x: logits.dev(d),
            n: elements as i64,
        },
    )?;
    let params = d.upload(&pack_sample_params(rows), "sampling params")?;
    let ids = d.alloc_uninit::<i32>(n, "sampled ids")?;
    d.kernels().sample_f32(
        sampling_geometry(n),
        &SampleArgs {
            out_ids: d.dev(&ids),
            logits: d.dev(&f32_logits),
            params: d.dev(&params),
            vocab: vocab as i32,
        },
    )?;
    Ok(sampled_ids(d.download(&ids)?))
}

/// The kernel's `i32` ids as token ids (a negative id, which a row of NaN logits could give, is 0).
fn sampled_ids(ids: Vec<i32>) -> Vec<u32> {
    ids.into_iter().map(|id| id.max(0) as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_follow_the_c_struct_layout() {
        let row = DeviceSampleRow {
            temperature: 0.5,
            top_p: 0.9,
            min_p: 0.0,
            top_k: -1,
            seed: 0x1234_5678_9abc_def0,
            token_index: 7,
        };
        let words = pack_sample_params(&[row, row]);
        assert_eq!(words.len(), 2 * SAMPLE_PARAMS_WORDS);
        assert_eq!(f32::from_bits(words[0]), 0.5);
        assert_eq!(f32::from_bits(words[1]), 0.9);
        assert_eq!(words[3] as i32, -1);
        assert_eq!((words[4], words[5]), (0x9abc_def0, 0x1234_5678));
        assert_eq!((words[6], words[7]), (7, 0));
        // The C struct is 32 bytes: 4 x 4-byte fields, then two 8-byte-aligned u64s.
        assert_eq!(SAMPLE_PARAMS_WORDS * 4, 4 * 4 + 2 * 8);
    }

    #[test]
    fn sampled_ids_keep_their_order_and_clamp_negatives() {
        assert_eq!(sampled_ids(vec![5, 0, -1, 49_151]), vec![5, 0, 0, 49_151]);
    }
}
