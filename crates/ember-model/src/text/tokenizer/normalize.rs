//! Unicode normalization forms a `tokenizer.json` normalizer may ask for (Qwen2/Qwen3: NFC),
//! applied to the text between special tokens before pre-tokenization, as `tokenizers` does.

use std::borrow::Cow;

use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// A Unicode normalization form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnicodeForm {
    /// Canonical composition.
    Nfc,
    /// Compatibility composition.
    Nfkc,
    /// Canonical decomposition.
    Nfd,
    /// Compatibility decomposition.
    Nfkd,
}

impl UnicodeForm {
    /// The form a normalizer `type` names, if it is one.
    pub fn from_type(name: &str) -> Option<Self> {
        Some(match name {
            "NFC" => Self::Nfc,
            "NFKC" => Self::Nfkc,
            "NFD" => Self::Nfd,
            "NFKD" => Self::Nfkd,
            _ => return None,
        })
    }

    /// `text` in this form (borrowed when it already is, for NFC's common case).
    pub fn apply(self, text: &str) -> Cow<'_, str> {
        match self {
            Self::Nfc if is_nfc_quick(text.chars()) == IsNormalized::Yes => Cow::Borrowed(text),
            Self::Nfc => Cow::Owned(text.nfc().collect()),
            Self::Nfkc => Cow::Owned(text.nfkc().collect()),
            Self::Nfd => Cow::Owned(text.nfd().collect()),
            Self::Nfkd => Cow::Owned(text.nfkd().collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_compose_and_decompose() {
        let decomposed = "e\u{301}";
        assert_eq!(UnicodeForm::Nfc.apply(decomposed), "\u{e9}");
        assert_eq!(UnicodeForm::Nfd.apply("\u{e9}"), decomposed);
        assert_eq!(UnicodeForm::Nfkc.apply("\u{fb01}"), "fi");
        assert!(matches!(UnicodeForm::Nfc.apply("plain"), Cow::Borrowed(_)));
        assert_eq!(UnicodeForm::from_type("NFKD"), Some(UnicodeForm::Nfkd));
        assert_eq!(UnicodeForm::from_type("Lowercase"), None);
    }
}
