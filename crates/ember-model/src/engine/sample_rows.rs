//! One step's logits into tokens: every sampled row is sampled (on the device when the whole
//! step allows it, else on the host with the request's full sampling parameters and token
//! history) and every prompt-logprob row gives the logprob of the next prompt token. A sequence
//! with speculative drafts is verified here: its rows are sampled in order, each exactly as
//! plain decoding would sample that token, until one differs from its draft. This is where
//! per-row logits processing (masks, adjustments) belongs: before `sample`.

use ember_core::{
    device_sample_row, sample, token_logprob, Backend, BackendResult, DeviceSampleRow, ModelRunnerOutput,
    PromptLogprobs, RequestHistories, SampleContext, SampledToken, ScheduledSeq, SchedulerOutput,
    TokenHistory, TokenLogprob,
};
use rayon::prelude::*;

use crate::engine::batch::prompt_logprob_positions;

/// The device sampling parameters of every sampled row of `output`, in batch order, when the
/// whole step can be sampled on the device: no prompt-logprob rows, no token masks (structured
/// output) and every sampled row plain (see [`device_sample_row`]). `None` sends the step to
/// the host sampler.
fn device_sample_rows(output: &SchedulerOutput) -> Option<Vec<DeviceSampleRow>> {
    let mut rows = Vec::with_capacity(output.seqs.len());
    for seq in &output.seqs {
        if !prompt_logprob_positions(seq).is_empty() || seq.token_mask.is_some() || seq.num_draft_tokens > 0 {
            return None;
        }
        if seq.sample {
            rows.push(device_sample_row(
                &seq.sampling_params,
                seq.seed,
                seq.num_output_tokens,
            )?);
        }
    }
    Some(rows)
}

/// What rows of logits are for.
enum RowJob<'a> {
    /// Sample the sequence's next token (one row, or `1 + num_draft_tokens` rows to verify).
    Sample(&'a ScheduledSeq),
    /// The logprob of the prompt token at `position + 1`, the row being at `position`.
    Prompt(&'a ScheduledSeq, usize),
}

impl RowJob<'_> {
    /// Logits rows the job reads.
    fn num_rows(&self) -> usize {
        match self {
            Self::Sample(seq) => 1 + seq.num_draft_tokens,
            Self::Prompt(..) => 1,
        }
    }
}

/// What a job's rows gave.
enum RowResult {
    /// The sampled token, or a verification's accepted drafts and the token after them.
    Sampled(Vec<SampledToken>),
    Prompt(Option<TokenLogprob>),
}

/// Samples `seq`'s rows in order (row `i` at token index `num_output_tokens + i`, penalties
/// seeing the drafts accepted before it) while each sample equals the draft of its row; returns
/// the samples up to and including the first that differs (or the bonus one after the last draft).
fn sample_seq(
    seq: &ScheduledSeq,
    rows: Vec<&mut [f32]>,
    history: Option<&TokenHistory>,
    eos_token_ids: &[u32],
) -> Vec<SampledToken> {
    let draft_ids = &seq.token_ids[seq.token_ids.len() - seq.num_draft_tokens..];
    let mut extended: Option<TokenHistory> = None;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let mask = match i {
            0 => seq.token_mask.as_ref(),
            _ => seq.draft_token_masks.get(i - 1),
        };
        if let Some(mask) = mask {
            mask.apply(row);
        }
        let ctx = SampleContext {
            seed: seq.seed,
            token_index: seq.num_output_tokens + i,
            history: extended.as_ref().or(history),
            eos_token_ids,
        };
        let token = sample(row, &seq.sampling_params, &ctx).into_sampled_token(seq.request_id.clone());
        let accepted = draft_ids.get(i) == Some(&token.token_id);
        if accepted {
            if let Some(base) = history {
                extended
                    .get_or_insert_with(|| base.clone())
                    .push_output(token.token_id);
            }
        }
        out.push(token);
        if !accepted {
            break;
        }
    }
    out
}

/// Appends the prompt logprob from the row at `position` of `seq` to this step's chunks. A
/// missing entry (no history: a bookkeeping bug) ends the request's chunk for this step.
fn push_prompt_logprob(
    chunks: &mut Vec<PromptLogprobs>,
    seq: &ScheduledSeq,
    position: usize,
    entry: Option<TokenLogprob>,
) {
    let Some(entry) = entry else {
        log::warn!(
            "no prompt history for request {} at position {position}",
            seq.request_id
        );
        return;
    };
    match chunks.last_mut() {
        Some(chunk)
            if chunk.request_id == seq.request_id
                && chunk.first_position + chunk.entries.len() == position + 1 =>
        {
            chunk.entries.push(entry);
        }
        _ => chunks.push(PromptLogprobs {
            request_id: seq.request_id.clone(),
            first_position: position + 1,
            entries: vec![entry],
        }),
    }
}

/// Samples one token for every sequence of `output` with `sample == true` and computes the
/// prompt logprobs of the rows that asked for them, from `logits`
/// (`[logits rows of the step, vocab_size]`); records the sampled tokens in `histories`.
/// `eos_token_ids` are masked before a request's `min_tokens`. A row's `token_mask` is applied
/// to its raw logits first, so the sampled token, its logprob and the top alternatives all come
/// from the constrained distribution.
pub fn sample_step<B: Backend>(
    backend: &B,
    logits: B::Tensor,
    vocab_size: usize,
    output: &SchedulerOutput,
    histories: &mut RequestHistories,
    eos_token_ids: &[u32],
) -> BackendResult<ModelRunnerOutput> {
    if let Some(rows) = device_sample_rows(output) {
        if let Some(tokens) = backend.sample_on_device(&logits, &rows)? {
            let mut out = ModelRunnerOutput::default();
            let sampled = output.seqs.iter().filter(|s| s.sample);
            // Device rows never ask for logprobs (`device_sample_row`), so none is computed.
            for (seq, token_id) in sampled.zip(tokens) {
                out.sampled.push(SampledToken {
                    request_id: seq.request_id.clone(),
                    token_id,
                    logprob: None,
                    rank: None,
                    top_logprobs: Vec::new(),
                });
            }
            histories.record(&out.sampled);
            return Ok(out);
        }
    }
    let mut jobs = Vec::new();
    for seq in &output.seqs {
        jobs.extend(prompt_logprob_positions(seq).map(|p| RowJob::Prompt(seq, p)));
        if seq.sample {
            jobs.push(RowJob::Sample(seq));
        }
    }
    let mut logits = backend.move_to_host(logits)?;
    let history_of = &*histories;
    let mut rows = logits.chunks_mut(vocab_size);
    let work: Vec<(&RowJob, Vec<&mut [f32]>)> = jobs
        .iter()
        .map(|job| (job, rows.by_ref().take(job.num_rows()).collect()))
        .collect();
    let results: Vec<RowResult> = work
        .into_par_iter()
        .map(|(job, mut rows)| match *job {
            RowJob::Sample(seq) => RowResult::Sampled(sample_seq(
                seq,
                rows,
                history_of.get(&seq.request_id),
                eos_token_ids,
            )),
            RowJob::Prompt(seq, position) => {
                let next = history_of
                    .get(&seq.request_id)
                    .and_then(|h| h.prompt_token_ids().get(position + 1).copied());
                let k = seq.sampling_params.prompt_logprobs.unwrap_or(0);
                let entry = rows
                    .first_mut()
                    .and_then(|row| next.and_then(|token_id| token_logprob(row, token_id, k)));
                RowResult::Prompt(entry)
            }
        })
        .collect();
    let mut out = ModelRunnerOutput::default();
    for (job, result) in jobs.iter().zip(results) {
        match (job, result) {
            (_, RowResult::Sampled(tokens)) => out.sampled.extend(tokens),
            (RowJob::Prompt(seq, position), RowResult::Prompt(entry)) => {
                push_prompt_logprob(&mut out.prompt_logprobs, seq, *position, entry);
            }
            (RowJob::Sample(_), RowResult::Prompt(_)) => {}
        }
    }
    histories.record(&out.sampled);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ember_core::{RequestUpdate, SamplingParams};

    use super::*;
    use crate::engine::batch::tests::{seq, step};
    use crate::structured::StructuredOutputs;
    use crate::text::tokenizer::tests::byte_level_tokenizer;

    #[test]
    fn device_sampling_needs_every_row_plain_and_no_prompt_logprobs() {
        // "b" is mid-prompt (no sampled row): only "a" and "c" get device rows.
        let plain = step(vec![
            seq("a", 5, 1, 3, None),
            seq("b", 0, 2, 10, None),
            seq("c", 9, 1, 3, None),
        ]);
        assert_eq!(device_sample_rows(&plain).map(|r| r.len()), Some(2));
        let prompt_rows = step(vec![seq("a", 5, 1, 3, None), seq("b", 0, 2, 10, Some(0))]);
        assert!(device_sample_rows(&prompt_rows).is_none());
        let mut penalized = seq("a", 5, 1, 3, None);
        penalized.sampling_params = Arc::new(SamplingParams {
            repetition_penalty: 1.2,
            ..Default::default()
        });
        assert!(device_sample_rows(&step(vec![penalized, seq("c", 9, 1, 3, None)])).is_none());
    }

    #[test]
    fn prompt_logprob_chunks_group_consecutive_rows() {
        let s = seq("a", 0, 4, 6, Some(0));
        let entry = |token_id| {
            Some(TokenLogprob {
                token_id,
                logprob: 0.0,
                rank: 1,
                top_logprobs: Vec::new(),
            })
        };
        let mut chunks = Vec::new();
        push_prompt_logprob(&mut chunks, &s, 0, entry(5));
        push_prompt_logprob(&mut chunks, &s, 1, entry(6));
        push_prompt_logprob(&mut chunks, &s, 2, None);
        push_prompt_logprob(&mut chunks, &s, 3, entry(8));
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[0].first_position, chunks[0].entries.len()), (1, 2));
        assert_eq!((chunks[1].first_position, chunks[1].entries.len()), (4, 1));
    }

    /// The greedy tokens a verification of `seq` emits from `logits` (one row per verified token).
    fn verify(seq: &ScheduledSeq, logits: &[Vec<f32>]) -> Vec<u32> {
        let mut rows = logits[..=seq.num_draft_tokens].to_vec();
        let rows = rows.iter_mut().map(|r| r.as_mut_slice()).collect();
        sample_seq(seq, rows, None, &[EOS])
            .iter()
            .map(|t| t.token_id)
            .collect()
    }

    /// Byte-level vocabulary: 256 bytes, the merge "ab" (256), EOS (257), two padding ids.
    const EOS: u32 = 257;
    const VOCAB_SIZE: usize = 259;

    /// Structured outputs with request "r" constrained to the regex "ab*c".
    fn constrained() -> StructuredOutputs {
        let tokenizer = byte_level_tokenizer(&[("a", "b")], &[("<|end|>", true)]);
        let mut state = StructuredOutputs::new(Arc::new(tokenizer), VOCAB_SIZE, vec![EOS]);
        let fields = ember_core::StructuredOutputsFields {
            regex: Some("ab*c".into()),
            ..Default::default()
        };
        state
            .add(&"r".into(), &Arc::new(fields.validate().unwrap()), None)
            .unwrap();
        state
    }

    #[test]
    fn unmasked_draft_rows_would_change_the_verified_tokens() {
        // Row p prefers 'z' (never allowed by "ab*c"), then `masked[p]`: masked decoding gives
        // "ab", "b", "c"; a row left unmasked samples 'z' instead.
        let masked = [256u32, b'b'.into(), b'c'.into()];
        let logits: Vec<Vec<f32>> = masked
            .iter()
            .map(|&t| {
                let mut row = vec![0.0f32; VOCAB_SIZE];
                row[usize::from(b'z')] = 9.0;
                row[t as usize] = 5.0;
                row
            })
            .collect();
        // Plain decoding: one masked row per step, each sampled token fed to the grammar.
        let mut plain = constrained();
        let mut plain_ids = Vec::new();
        for row in &logits {
            let mut output = step(vec![seq("r", 0, 1, 1, None)]);
            plain.fill_masks(&mut output);
            let sampled = sample_seq(&output.seqs[0], vec![row.clone().as_mut_slice()], None, &[EOS]);
            let mut update = RequestUpdate {
                request_id: "r".into(),
                new_tokens: sampled.clone(),
                finish_reason: None,
                stop_token_id: None,
                num_cached_tokens: 0,
            };
            plain.accept(&mut update);
            plain_ids.extend(sampled.iter().map(|t| t.token_id));
        }
        assert_eq!(plain_ids, masked);
        // Speculating "ab", "b": each draft row masked with the grammar after the drafts before it.
        let mut drafting = seq("r", 0, 3, 1, None);
        drafting.token_ids = vec![0, 256, b'b'.into()];
        drafting.num_draft_tokens = 2;
        let mut output = step(vec![drafting]);
        constrained().fill_masks(&mut output);
        let spec = &output.seqs[0];
        assert_eq!(spec.draft_token_masks.len(), 2);
        assert_eq!(verify(spec, &logits), plain_ids);
        // Mutants of the draft check (draft rows unmasked, or masked with the first row's
        // grammar state) make the equality fail.
        let mut unmasked = spec.clone();
        unmasked.draft_token_masks.clear();
        assert_ne!(verify(&unmasked, &logits), plain_ids);
        let mut stale = spec.clone();
        stale.draft_token_masks = vec![spec.token_mask.clone().unwrap(); 2];
        assert_ne!(verify(&stale, &logits), plain_ids);
    }
}
