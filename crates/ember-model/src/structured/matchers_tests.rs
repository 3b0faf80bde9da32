//! The matchers over a tiny byte-level tokenizer: masks, EOS only where the grammar accepts,
//! compile errors naming the field, independent forks, refused tokens, draft checks.

use std::sync::Arc;

use ember_core::{SampledToken, SamplingParams, ScheduledSeq, StructuredOutputsFields};

use super::*;
use crate::text::tokenizer::tests::byte_level_tokenizer;

/// 256 bytes, merges "ab" (256) and "{\"" (257), then the special EOS "<|end|>" (258).
const EOS: u32 = 258;
const VOCAB_SIZE: usize = 260; // two padding ids past the tokenizer, never allowed

fn state() -> StructuredOutputs {
    let tokenizer = byte_level_tokenizer(&[("a", "b"), ("{", "\"")], &[("<|end|>", true)]);
    StructuredOutputs::new(Arc::new(tokenizer), VOCAB_SIZE, vec![EOS])
}

fn spec(fields: StructuredOutputsFields) -> Arc<ember_core::StructuredOutputs> {
    Arc::new(fields.validate().unwrap())
}

fn regex(rx: &str) -> Arc<ember_core::StructuredOutputs> {
    spec(StructuredOutputsFields {
        regex: Some(rx.into()),
        ..Default::default()
    })
}

/// The mask of request "r" for its next token.
fn mask(state: &mut StructuredOutputs) -> Arc<TokenMask> {
    let mut output = step(&["r"]);
    state.fill_masks(&mut output);
    output.seqs[0].token_mask.clone().unwrap()
}

/// A step that samples the next token of each request in `ids`.
fn step(ids: &[&str]) -> SchedulerOutput {
    let seqs = ids
        .iter()
        .map(|&id| ScheduledSeq {
            request_id: id.into(),
            token_ids: vec![0],
            num_draft_tokens: 0,
            num_computed_tokens: 0,
            block_ids: vec![0],
            sample: true,
            sampling_params: Arc::new(SamplingParams::default()),
            num_output_tokens: 0,
            seed: 0,
            num_prompt_tokens: 1,
            all_token_ids: None,
            token_mask: None,
            draft_token_masks: Vec::new(),
            lora_id: None,
        })
        .collect();
    SchedulerOutput {
        seqs,
        num_batched_tokens: ids.len(),
        released_ids: Vec::new(),
    }
}

fn update(token_ids: &[u32]) -> RequestUpdate {
    RequestUpdate {
        request_id: "r".into(),
        new_tokens: token_ids
            .iter()
            .map(|&token_id| SampledToken {
                request_id: "r".into(),
                token_id,
                logprob: None,
                rank: None,
                top_logprobs: Vec::new(),
            })
            .collect(),
        finish_reason: None,
        stop_token_id: None,
        num_cached_tokens: 0,
    }
}

#[test]
fn eos_is_allowed_only_where_the_grammar_accepts() {
    let mut s = state();
    s.add(&"r".into(), &regex("a{2,3}"), None).unwrap();
    let first = mask(&mut s);
    assert!(first.allows(b'a'.into()) && !first.allows(EOS) && !first.allows(b'b'.into()));
    assert!(!first.allows(256), "\"ab\" leaves the language");
    assert!(!first.allows(258) && !first.allows(259));
    assert_eq!(s.accept(&mut update(&[b'a'.into()])), None);
    assert_eq!(s.accept(&mut update(&[b'a'.into()])), None);
    let accepting = mask(&mut s);
    assert!(accepting.allows(EOS) && accepting.allows(b'a'.into()));
    assert_eq!(accepting.num_allowed(), 2);
    // A third "a" completes the language: nothing may follow, the request stops.
    let mut third = update(&[b'a'.into()]);
    assert_eq!(s.accept(&mut third), Some(FinishReason::Stop));
    assert_eq!(third.new_tokens.len(), 1);
}

#[test]
fn grammars_that_do_not_compile_name_the_field() {
    let mut s = state();
    let bad = [
        (regex("a("), "regex does not compile"),
        (
            spec(StructuredOutputsFields {
                grammar: Some("start: undefined_rule".into()),
                ..Default::default()
            }),
            "grammar does not compile",
        ),
        (
            spec(StructuredOutputsFields {
                json: Some("{\"type\": \"nonsense\"}".into()),
                ..Default::default()
            }),
            "json does not compile",
        ),
        (
            spec(StructuredOutputsFields {
                json: Some("{not json".into()),
                ..Default::default()
            }),
            "json is not valid JSON",
        ),
    ];
    for (spec, expected) in bad {
        let err = s.add(&"r".into(), &spec, None).unwrap_err();
        assert_eq!(err.field, "structured_outputs");
        assert!(err.message.contains(expected), "{err}");
    }
    assert_eq!(s.num_requests(), 0);
}

#[test]
fn forks_get_independent_matchers_of_one_compilation() {
    let mut s = state();
    let choice = spec(StructuredOutputsFields {
        choice: Some(vec!["ab".into(), "ba".into()]),
        ..Default::default()
    });
    s.add(&"r".into(), &choice, None).unwrap();
    s.add(&"fork".into(), &choice, None).unwrap();
    assert_eq!(s.compiler().num_cached(), 1);
    assert_eq!(s.accept(&mut update(&[b'b'.into()])), None);
    let mut output = step(&["r", "fork"]);
    s.fill_masks(&mut output);
    let (after_b, fresh) = (
        output.seqs[0].token_mask.clone().unwrap(),
        output.seqs[1].token_mask.clone().unwrap(),
    );
    assert!(after_b.allows(b'a'.into()) && !after_b.allows(b'b'.into()));
    assert!(fresh.allows(256) && fresh.allows(b'b'.into()) && fresh.allows(b'a'.into()));
}

#[test]
fn refused_tokens_are_dropped_and_end_the_request() {
    let mut s = state();
    s.add(&"r".into(), &regex("ab+"), None).unwrap();
    let mut refused = update(&[b'a'.into(), b'c'.into(), b'b'.into()]);
    assert_eq!(s.accept(&mut refused), Some(FinishReason::Abort));
    assert_eq!(refused.new_tokens.len(), 1);
    s.add(&"r".into(), &regex("ab+"), None).unwrap();
    let mut accepted_then_refused = update(&[256, b'c'.into()]);
    assert_eq!(s.accept(&mut accepted_then_refused), Some(FinishReason::Stop));
    assert_eq!(accepted_then_refused.new_tokens.len(), 1);
}

#[test]
fn draft_tokens_can_be_checked_and_rolled_back() {
    let mut s = state();
    s.add(&"r".into(), &regex("ab*c"), None).unwrap();
    assert_eq!(s.num_acceptable("r", &[256, 98, 98, 120]), Some(3));
    assert_eq!(s.num_acceptable("unknown", &[1]), None);
    assert_eq!(s.accept(&mut update(&[256, 98])), None);
    s.rollback("r", 1).unwrap();
    let after_ab = mask(&mut s);
    assert!(after_ab.allows(b'c'.into()) && after_ab.allows(b'b'.into()) && !after_ab.allows(EOS));
}

#[test]
fn mask_words_clear_bits_past_the_vocabulary() {
    let mask = mask_words(&[u32::MAX; 9], VOCAB_SIZE, &[EOS], false);
    assert_eq!(mask.words.len(), 9);
    assert_eq!(mask.num_allowed(), VOCAB_SIZE);
}

#[test]
fn jump_forward_takes_only_tokens_that_are_the_one_allowed() {
    let mut s = state();
    // After "x", "yz" is forced byte by byte ("ab" would be a second choice only where "a" is).
    s.add(&"r".into(), &regex("x(yz)(a|b)"), Some(vec![u32::from(b'q')]))
        .unwrap();
    assert_eq!(s.accept(&mut update(&[b'x'.into()])), None);
    let (forced, complete) = s.take_forced_tokens("r", 16);
    assert_eq!(
        (forced, complete),
        (vec![u32::from(b'y'), u32::from(b'z')], false)
    );
    // The mask that stopped the run (two choices) serves the next step.
    let next = mask(&mut s);
    assert!(next.allows(b'a'.into()) && next.allows(b'b'.into()) && !next.allows(256));
    // A forced last token completes the grammar.
    s.add(&"r".into(), &regex("ab?c"), Some(Vec::new())).unwrap();
    assert_eq!(s.accept(&mut update(&[b'a'.into(), b'b'.into()])), None);
    assert_eq!(s.take_forced_tokens("r", 16), (vec![u32::from(b'c')], true));
    // Stop ids, EOS and requests without jump-forward are never forced.
    s.add(&"r".into(), &regex("q"), Some(vec![u32::from(b'q')]))
        .unwrap();
    assert_eq!(s.take_forced_tokens("r", 16), (Vec::new(), false));
    s.add(&"r".into(), &regex("zz"), None).unwrap();
    assert_eq!(s.take_forced_tokens("r", 16), (Vec::new(), false));
}

#[test]
fn a_callers_compilation_serves_the_engines_add() {
    let mut s = state();
    let (compiler, rx) = (s.compiler().clone(), regex("a+b"));
    let on_caller = rx.clone();
    std::thread::spawn(move || compiler.compile(&on_caller).map(|_| ()))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(
        s.compiler().num_cached(),
        1,
        "the caller's clone fills the engine's cache"
    );
    s.add(&"r".into(), &rx, None).unwrap();
    assert_eq!(s.compiler().num_cached(), 1);
    let allowed = mask(&mut s);
    assert!(allowed.allows(b'a'.into()) && !allowed.allows(b'b'.into()));
    let Err(err) = s.compiler().clone().compile(&regex("a(")) else {
        panic!("an unbalanced regex compiled");
    };
    assert_eq!(err.field, "structured_outputs");
    assert!(err.message.contains("regex does not compile"), "{}", err.message);
    assert_eq!(s.compiler().num_cached(), 1, "a failed compilation is not cached");
}
