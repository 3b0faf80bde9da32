//! Opening the draft model of `speculative_config` and checking it can draft for the target:
//! the same vocabulary (size and every token's text), since drafts are target token ids.

use crate::engine::engine_args::DraftModelArgs;
use crate::engine::loader::{open_model, OpenedModel};
use crate::error::EngineError;

/// Opens the draft model `args` names; refuses one whose vocabulary differs from `target`'s,
/// naming `speculative_config.model` and what differs.
pub fn open_draft(args: &DraftModelArgs, target: &OpenedModel) -> Result<OpenedModel, EngineError> {
    let draft = open_model(&args.model_path).map_err(|e| {
        EngineError::InvalidRequest(format!(
            "speculative_config.model ({}) cannot be loaded: {e}",
            args.model_path.display()
        ))
    })?;
    check_same_vocabulary(target, &draft).map_err(|detail| {
        EngineError::InvalidRequest(format!(
            "speculative_config.model ({}) has a different vocabulary from the target model: {detail}",
            args.model_path.display()
        ))
    })?;
    Ok(draft)
}

/// What differs between the two vocabularies, if anything.
fn check_same_vocabulary(target: &OpenedModel, draft: &OpenedModel) -> Result<(), String> {
    let sizes = [
        (
            "vocab_size (embedding rows)",
            target.config.vocab_size,
            draft.config.vocab_size,
        ),
        (
            "tokenizer size",
            target.tokenizer.vocab_size(),
            draft.tokenizer.vocab_size(),
        ),
    ];
    for (what, target_size, draft_size) in sizes {
        if target_size != draft_size {
            return Err(format!("{what} {draft_size} != the target's {target_size}"));
        }
    }
    for id in 0..target.tokenizer.vocab_size() as u32 {
        let (t, d) = (target.tokenizer.id_to_token(id), draft.tokenizer.id_to_token(id));
        if t != d {
            return Err(format!(
                "token {id} is {:?} in the draft but {:?} in the target",
                d.unwrap_or(""),
                t.unwrap_or("")
            ));
        }
    }
    Ok(())
}
