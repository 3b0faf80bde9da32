//! Token table shared by every tokenizer model: texts, decoded bytes, types and the
//! text-to-id map.

use std::collections::HashMap;

/// The kind of a vocabulary entry (GGUF `tokenizer.ggml.token_type` numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// An ordinary token produced by the model's algorithm (1).
    Normal,
    /// The unknown token (2).
    Unknown,
    /// A control token such as BOS/EOS or chat markup (3).
    Control,
    /// A user-defined token matched literally in the input (4).
    UserDefined,
    /// A reserved, unused slot (5).
    Unused,
    /// A byte-fallback token `<0xXX>` (6).
    Byte,
}

impl TokenType {
    /// Maps a GGUF token type number; unknown numbers count as normal tokens.
    pub fn from_gguf(value: u64) -> Self {
        match value {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

/// Vocabulary: one entry per id.
#[derive(Debug, Default)]
pub(crate) struct Vocab {
    pub texts: Vec<String>,
    pub bytes: Vec<Vec<u8>>,
    pub types: Vec<TokenType>,
    pub ids: HashMap<String, u32>,
}

impl Vocab {
    /// Builds the table; `bytes_of` gives the decoded bytes of a normal token.
    pub fn new(
        texts: Vec<String>,
        types: Vec<TokenType>,
        bytes_of: impl Fn(&str, TokenType) -> Vec<u8>,
    ) -> Self {
        let mut ids = HashMap::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            // Later duplicates win, as in llama.cpp.
            ids.insert(t.clone(), i as u32);
        }
        let bytes = texts.iter().zip(&types).map(|(t, &ty)| bytes_of(t, ty)).collect();
        Self {
            texts,
            bytes,
            types,
            ids,
        }
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn get(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }
}

/// Parses a byte-fallback token text `<0xXX>`.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The ids of the 256 byte-fallback tokens `<0x00>`..`<0xFF>`, where present.
pub(crate) fn byte_fallback_ids(vocab: &Vocab) -> [Option<u32>; 256] {
    let mut ids = [None; 256];
    for (b, slot) in ids.iter_mut().enumerate() {
        *slot = vocab.get(&format!("<0x{b:02X}>"));
    }
    ids
}
