//! Which sampled rows a device backend may sample itself: the plain distribution (greedy, or
//! temperature with top-k / top-p / min-p) and no request-specific logit adjustments, so the
//! only thing that has to come back to the host is the token id and its logprob.

use crate::sampling_params::SamplingParams;

/// One row's parameters for sampling on the device (the `SampleParams` of `cuda/sampling.cu`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceSampleRow {
    /// 0 = greedy.
    pub temperature: f32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// `<= 0` = off.
    pub top_k: i32,
    /// The request's sampling seed.
    pub seed: u64,
    /// Index of the output token being sampled (the counter of the seeded draw).
    pub token_index: u64,
}

/// The device parameters of a row sampling output token `token_index`, or `None` when the
/// row needs the host sampler: logprobs asked for (rank and alternatives), `logit_bias`,
/// penalties, or the stop-token mask before `min_tokens`.
pub fn device_sample_row(params: &SamplingParams, seed: u64, token_index: usize) -> Option<DeviceSampleRow> {
    let plain = params.logprobs.is_none()
        && params.logit_bias.is_empty()
        && !params.has_penalties()
        && token_index >= params.min_tokens;
    plain.then_some(DeviceSampleRow {
        temperature: params.temperature,
        top_p: params.top_p,
        min_p: params.min_p,
        top_k: params.top_k,
        seed,
        token_index: token_index as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_rows_go_to_the_device() {
        let greedy = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        let row = device_sample_row(&greedy, 7, 3).unwrap();
        assert_eq!((row.temperature, row.seed, row.token_index), (0.0, 7, 3));
        let nucleus = SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            top_k: 40,
            min_p: 0.05,
            ..Default::default()
        };
        let row = device_sample_row(&nucleus, 1, 0).unwrap();
        assert_eq!((row.top_p, row.top_k, row.min_p), (0.9, 40, 0.05));
    }

    #[test]
    fn adjusted_or_logprob_rows_stay_on_the_host() {
        let cases = [
            SamplingParams {
                logprobs: Some(0),
                ..Default::default()
            },
            SamplingParams {
                logit_bias: vec![(1, 2.0)],
                ..Default::default()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..Default::default()
            },
            SamplingParams {
                frequency_penalty: 0.5,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 1.1,
                ..Default::default()
            },
        ];
        for params in &cases {
            assert!(device_sample_row(params, 0, 5).is_none(), "{params:?}");
        }
        let min_tokens = SamplingParams {
            min_tokens: 4,
            ..Default::default()
        };
        assert!(device_sample_row(&min_tokens, 0, 3).is_none());
        assert!(device_sample_row(&min_tokens, 0, 4).is_some());
    }
}
