//! Splitting input text around special and user-defined tokens written in it, longest
//! token first (llama.cpp `tokenizer_st_partition`).

/// A piece of input after special-token splitting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Byte range of ordinary text.
    Text(usize, usize),
    /// A special token matched in the text.
    Token(u32),
}

/// One literal token to look for.
#[derive(Clone, Debug)]
pub(crate) struct SpecialToken {
    pub text: String,
    pub id: u32,
    /// Control/unknown tokens are only matched when special parsing is on.
    pub control: bool,
    /// Swallow whitespace on the left / right of the match.
    pub lstrip: bool,
    pub rstrip: bool,
}

/// The special tokens of a vocabulary, longest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct SpecialMatcher {
    tokens: Vec<SpecialToken>,
}

impl SpecialMatcher {
    /// Sorts the tokens longest first (ties by id) and drops empty ones.
    pub fn new(mut tokens: Vec<SpecialToken>) -> Self {
        tokens.retain(|t| !t.text.is_empty());
        tokens.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        Self { tokens }
    }

    /// Splits `text`; control tokens are recognized only when `parse_special`.
    pub fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0, text.len())];
        for tok in &self.tokens {
            if tok.control && !parse_special {
                continue;
            }
            if !text.contains(tok.text.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for &f in &frags {
                match f {
                    Fragment::Token(_) => next.push(f),
                    Fragment::Text(s, e) => split_on(text, s, e, tok, &mut next),
                }
            }
            frags = next;
        }
        frags
    }
}

fn split_on(text: &str, s: usize, e: usize, tok: &SpecialToken, out: &mut Vec<Fragment>) {
    let bytes = text.as_bytes();
    let mut pos = s;
    while let Some(rel) = text[pos..e].find(tok.text.as_str()) {
        let m = pos + rel;
        let mut left_end = m;
        if tok.lstrip {
            while left_end > pos && bytes[left_end - 1].is_ascii_whitespace() {
                left_end -= 1;
            }
        }
        if left_end > pos {
            out.push(Fragment::Text(pos, left_end));
        }
        out.push(Fragment::Token(tok.id));
        pos = m + tok.text.len();
        if tok.rstrip {
            while pos < e && bytes[pos].is_ascii_whitespace() {
                pos += 1;
            }
        }
    }
    if pos < e {
        out.push(Fragment::Text(pos, e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(text: &str, id: u32, control: bool) -> SpecialToken {
        SpecialToken {
            text: text.into(),
            id,
            control,
            lstrip: false,
            rstrip: false,
        }
    }

    #[test]
    fn longest_first_and_control_gating() {
        let m = SpecialMatcher::new(vec![
            tok("<a>", 1, true),
            tok("<a><b>", 2, true),
            tok("[u]", 3, false),
        ]);
        let t = "x<a><b>y<a>[u]";
        assert_eq!(
            m.partition(t, true),
            [
                Fragment::Text(0, 1),
                Fragment::Token(2),
                Fragment::Text(7, 8),
                Fragment::Token(1),
                Fragment::Token(3)
            ]
        );
        assert_eq!(m.partition(t, false), [Fragment::Text(0, 11), Fragment::Token(3)]);
    }
}
