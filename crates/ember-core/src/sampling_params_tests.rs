//! Unit tests of the sampling parameters and their validation.

use super::*;

#[test]
fn completions_of_a_valid_request_stay_valid() {
    let params = ValidSamplingParams::new(SamplingParams {
        n: 3,
        seed: Some(u64::MAX),
        prompt_logprobs: Some(2),
        ..Default::default()
    })
    .unwrap();
    let second = params.for_completion(1);
    assert_eq!(
        (second.n, second.seed, second.prompt_logprobs),
        (1, Some(0), None)
    );
    assert_eq!(params.for_completion(0).prompt_logprobs, Some(2));
    assert_eq!(second.validate(), Ok(()));
    assert!(ValidSamplingParams::new(SamplingParams {
        top_p: 0.0,
        ..Default::default()
    })
    .is_err());
}

#[test]
fn defaults_are_valid() {
    assert_eq!(SamplingParams::default().validate(), Ok(()));
}

#[test]
fn errors_name_the_field_and_limit() {
    let params = SamplingParams {
        top_p: 1.5,
        ..Default::default()
    };
    let err = params.validate().unwrap_err();
    assert_eq!(err.field, "top_p");
    assert!(err.to_string().contains("(0, 1]"), "{err}");
    let params = SamplingParams {
        temperature: -0.5,
        ..Default::default()
    };
    assert_eq!(params.validate().unwrap_err().field, "temperature");
}

fn error_of(params: SamplingParams) -> InvalidParam {
    params.validate().unwrap_err()
}

#[test]
fn penalties_and_bias_are_range_checked() {
    for (field, params) in [
        (
            "presence_penalty",
            SamplingParams {
                presence_penalty: 2.5,
                ..Default::default()
            },
        ),
        (
            "frequency_penalty",
            SamplingParams {
                frequency_penalty: f32::NAN,
                ..Default::default()
            },
        ),
        (
            "repetition_penalty",
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ),
        (
            "logit_bias",
            SamplingParams {
                logit_bias: vec![(3, 100.5)],
                ..Default::default()
            },
        ),
        (
            "prompt_logprobs",
            SamplingParams {
                prompt_logprobs: Some(MAX_LOGPROBS + 1),
                ..Default::default()
            },
        ),
        (
            "stop",
            SamplingParams {
                stop: vec!["x".into()],
                detokenize: false,
                ..Default::default()
            },
        ),
    ] {
        let err = error_of(params);
        assert_eq!(err.field, field, "{err}");
    }
    let err = error_of(SamplingParams {
        presence_penalty: -3.0,
        ..Default::default()
    });
    assert!(err.to_string().contains("[-2, 2]"), "{err}");
}

#[test]
fn lists_and_n_are_bounded() {
    let cases = [
        (
            "n",
            SamplingParams {
                n: MAX_N + 1,
                ..Default::default()
            },
        ),
        (
            "stop",
            SamplingParams {
                stop: vec!["x".into(); MAX_STOP_STRINGS + 1],
                ..Default::default()
            },
        ),
        (
            "stop",
            SamplingParams {
                stop: vec!["x".repeat(MAX_STOP_STRING_BYTES + 1)],
                ..Default::default()
            },
        ),
        (
            "stop_token_ids",
            SamplingParams {
                stop_token_ids: vec![1; MAX_STOP_TOKEN_IDS + 1],
                ..Default::default()
            },
        ),
        (
            "logit_bias",
            SamplingParams {
                logit_bias: (0..=MAX_LOGIT_BIAS_ENTRIES as u32).map(|id| (id, 1.0)).collect(),
                ..Default::default()
            },
        ),
    ];
    for (field, params) in cases {
        let err = error_of(params);
        assert_eq!(err.field, field, "{err}");
        let message = err.to_string();
        assert!(
            message.contains("at most") || message.contains("[1, 128]"),
            "{err}"
        );
    }
    let at_limit = SamplingParams {
        n: MAX_N,
        stop: vec!["y".repeat(MAX_STOP_STRING_BYTES); MAX_STOP_STRINGS],
        ..Default::default()
    };
    assert_eq!(at_limit.validate(), Ok(()));
}

#[test]
fn stop_and_prompt_token_ids_are_checked_against_the_vocab() {
    let params = SamplingParams {
        stop_token_ids: vec![3, 100],
        ..Default::default()
    };
    let err = params.validate_token_ids(100).unwrap_err();
    assert_eq!(err.field, "stop_token_ids");
    assert!(
        err.to_string().contains("100") && err.to_string().contains("vocab_size 100"),
        "{err}"
    );
    assert_eq!(check_prompt_token_ids(&[0, 99], 100), Ok(()));
    assert_eq!(
        check_prompt_token_ids(&[0, 100], 100).unwrap_err().field,
        "prompt_token_ids"
    );
}

#[test]
fn logit_bias_ids_are_checked_against_the_vocab() {
    let params = SamplingParams {
        logit_bias: vec![(1, 5.0), (99, -5.0)],
        ..Default::default()
    };
    assert_eq!(params.validate(), Ok(()));
    assert_eq!(params.validate_token_ids(100), Ok(()));
    let err = params.validate_token_ids(99).unwrap_err();
    assert_eq!(err.field, "logit_bias");
    assert!(
        err.to_string().contains("99") && err.to_string().contains("vocab_size 99"),
        "{err}"
    );
}

#[test]
fn history_is_needed_only_for_penalties_and_prompt_logprobs() {
    assert!(!SamplingParams::default().needs_token_history());
    let penalized = SamplingParams {
        repetition_penalty: 1.2,
        ..Default::default()
    };
    assert!(penalized.has_penalties() && penalized.needs_token_history());
    let prompt = SamplingParams {
        prompt_logprobs: Some(0),
        ..Default::default()
    };
    assert!(!prompt.has_penalties() && prompt.needs_token_history());
}
