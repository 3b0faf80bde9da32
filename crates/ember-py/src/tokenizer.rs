//! `ember._core.Tokenizer`: the model's tokenizer and chat template.

use std::sync::Arc;

use ember_model::text::chat_template::{ChatMessage, ChatTemplate};
use ember_model::text::tokenizer::Tokenizer;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::{self, type_name};
use crate::errors::{invalid_param, invalid_request};
use crate::guard::guard;

/// The model's tokenizer (from GGUF metadata or tokenizer.json) and chat template.
#[pyclass(name = "Tokenizer", module = "ember._core", frozen)]
pub struct PyTokenizer {
    tokenizer: Arc<Tokenizer>,
    chat_template: Option<Arc<ChatTemplate>>,
}

impl PyTokenizer {
    /// Wraps the engine's tokenizer and template.
    pub fn new(tokenizer: Arc<Tokenizer>, chat_template: Option<Arc<ChatTemplate>>) -> Self {
        Self {
            tokenizer,
            chat_template,
        }
    }
}

fn message_from_dict(index: usize, message: &Bound<'_, PyAny>) -> PyResult<ChatMessage> {
    let dict = message.cast::<PyDict>().map_err(|_| {
        invalid_param(
            "messages",
            format!(
                "messages[{index}] must be a dict with 'role' and 'content', got {}",
                type_name(message)
            ),
        )
    })?;
    let text = |key: &str| -> PyResult<String> {
        let value = dict
            .get_item(key)?
            .ok_or_else(|| invalid_param("messages", format!("messages[{index}] has no '{key}'")))?;
        convert::text(&value, "messages").map_err(|_| {
            invalid_param(
                "messages",
                format!(
                    "messages[{index}]['{key}'] must be a string of valid Unicode, got {}",
                    type_name(&value)
                ),
            )
        })
    };
    let mut extra = serde_json::Map::new();
    for (key, value) in dict.iter() {
        let key = convert::text(&key, "messages")?;
        if key == "role" || key == "content" {
            continue;
        }
        extra.insert(key.clone(), json_value(index, &key, &value)?);
    }
    Ok(ChatMessage {
        role: text("role")?,
        content: text("content")?,
        extra,
    })
}

/// A message field other than role and content (tool calls, ids) as JSON, through Python's
/// `json.dumps`; an error naming the field when it is not JSON data.
fn json_value(index: usize, key: &str, value: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let not_json = |detail: String| {
        invalid_param(
            "messages",
            format!(
                "messages[{index}]['{key}'] must be JSON data (dicts, lists, strings, numbers): {detail}"
            ),
        )
    };
    let dumped = value
        .py()
        .import("json")?
        .call_method1("dumps", (value,))
        .map_err(|e| not_json(e.to_string()))?;
    let text: String = dumped.extract()?;
    serde_json::from_str(&text).map_err(|e| not_json(e.to_string()))
}

#[pymethods]
impl PyTokenizer {
    /// Number of tokens in the vocabulary.
    #[getter]
    fn vocab_size(&self) -> PyResult<usize> {
        guard(|| Ok(self.tokenizer.vocab_size()))
    }

    /// Beginning-of-sequence token id, if the model has one.
    #[getter]
    fn bos_token_id(&self) -> PyResult<Option<u32>> {
        guard(|| Ok(self.tokenizer.bos_token_id()))
    }

    /// End-of-sequence token id of the tokenizer, if any.
    #[getter]
    fn eos_token_id(&self) -> PyResult<Option<u32>> {
        guard(|| Ok(self.tokenizer.eos_token_id()))
    }

    /// Token ids of `text`; special tokens written in the text are recognized.
    #[pyo3(signature = (text, add_special_tokens = false))]
    fn encode(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        add_special_tokens: bool,
    ) -> PyResult<Vec<u32>> {
        guard(|| {
            let text = convert::text(text, "prompt")?;
            Ok(py.detach(|| self.tokenizer.encode(&text, add_special_tokens)))
        })
    }

    /// Text of `token_ids`.
    #[pyo3(signature = (token_ids, skip_special_tokens = true))]
    fn decode(&self, token_ids: &Bound<'_, PyAny>, skip_special_tokens: bool) -> PyResult<String> {
        guard(|| {
            let token_ids = convert::token_ids(token_ids, "token_ids")?;
            let vocab_size = self.tokenizer.vocab_size() as u32;
            if let Some(bad) = token_ids.iter().find(|&&id| id >= vocab_size) {
                return Err(invalid_param(
                    "token_ids",
                    format!("token id {bad} is out of range (vocab_size {vocab_size})"),
                ));
            }
            Ok(self.tokenizer.decode(&token_ids, skip_special_tokens))
        })
    }

    /// The id of a token's text form, if it is in the vocabulary.
    fn token_to_id(&self, token: &Bound<'_, PyAny>) -> PyResult<Option<u32>> {
        guard(|| Ok(self.tokenizer.token_to_id(&convert::text(token, "token")?)))
    }

    /// Renders a conversation (a list of {"role", "content", ...} dicts; other fields such as
    /// `tool_calls` reach the template as they are) with the chat template.
    #[pyo3(signature = (messages, add_generation_prompt = true))]
    fn apply_chat_template(
        &self,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
    ) -> PyResult<String> {
        guard(|| {
            let template = self
                .chat_template
                .as_ref()
                .ok_or_else(|| invalid_request("the model has no chat template"))?;
            let items = convert::items(messages).ok_or_else(|| {
                invalid_param(
                    "messages",
                    format!(
                        "messages must be a list of message dicts, got {}",
                        type_name(messages)
                    ),
                )
            })?;
            let messages = items
                .iter()
                .enumerate()
                .map(|(i, m)| message_from_dict(i, m))
                .collect::<PyResult<Vec<_>>>()?;
            template
                .render(&messages, add_generation_prompt)
                .map_err(|e| invalid_param("messages", format!("chat template: {e}")))
        })
    }
}
