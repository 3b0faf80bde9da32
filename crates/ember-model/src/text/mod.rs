//! Text: the tokenizer (from GGUF metadata or `tokenizer.json`) and chat templates.

pub mod chat_template;
pub mod tokenizer;
