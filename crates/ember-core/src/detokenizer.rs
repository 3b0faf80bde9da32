//! Incremental detokenization (token ids to UTF-8 text, one token at a time) and stop-string
//! matching over the growing text.

/// What the detokenizer needs from a tokenizer's vocabulary.
pub trait TokenVocab {
    /// The bytes token `id` contributes to decoded text (empty for unknown ids).
    fn token_bytes(&self, id: u32) -> &[u8];
    /// True for special tokens (BOS, EOS, chat markers).
    fn is_special(&self, id: u32) -> bool;
}

/// Turns a stream of token ids into text without ever splitting a multi-byte character.
#[derive(Clone, Debug, Default)]
pub struct IncrementalDetokenizer {
    skip_special_tokens: bool,
    pending: Vec<u8>,
    text: String,
}

impl IncrementalDetokenizer {
    /// An empty detokenizer; `skip_special_tokens` leaves special tokens out of the text.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            pending: Vec::new(),
            text: String::new(),
        }
    }

    /// Appends one token and returns the text it completed. Trailing bytes of an unfinished
    /// UTF-8 character are held back; invalid bytes become U+FFFD.
    pub fn push<V: TokenVocab + ?Sized>(&mut self, vocab: &V, token_id: u32) -> String {
        if self.skip_special_tokens && vocab.is_special(token_id) {
            return String::new();
        }
        self.pending.extend_from_slice(vocab.token_bytes(token_id));
        self.decode_pending(false)
    }

    /// Emits any held-back bytes (as U+FFFD, since they never formed a character).
    pub fn flush(&mut self) -> String {
        self.decode_pending(true)
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn num_pending_bytes(&self) -> usize {
        self.pending.len()
    }

    fn decode_pending(&mut self, flush: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                }
                Err(err) => {
                    let valid = err.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..start + valid]));
                    match err.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + bad;
                        }
                        None if flush => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = self.pending.len();
                        }
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        self.text.push_str(&out);
        out
    }
}

/// Where a stop string matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopStringMatch {
    /// Index of the matched string in the request's `stop` list.
    pub stop_index: usize,
    /// Byte offset of the match in the cumulative text.
    pub offset: usize,
}

/// Text released by [`StopStrings::update`], and the match that ended the request, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopUpdate {
    /// New text safe to show (never part of a possible stop string).
    pub text: String,
    /// Set when a stop string matched: the request should finish with `FinishReason::Stop`.
    pub matched: Option<StopStringMatch>,
}

/// Finds stop strings in a request's growing text, including ones spanning tokens, and
/// holds back a trailing piece that could still become one.
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    include_stop_str_in_output: bool,
    max_len: usize,
    emitted_len: usize,
    stopped: bool,
}

impl StopStrings {
    /// A matcher for `stops` (empty strings are ignored). With `include_stop_str_in_output`
    /// the matched string is part of the released text.
    pub fn new(stops: Vec<String>, include_stop_str_in_output: bool) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            include_stop_str_in_output,
            max_len,
            emitted_len: 0,
            stopped: false,
        }
    }

    /// True when there is nothing to match.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Bytes of the cumulative text released so far.
    pub fn emitted_len(&self) -> usize {
        self.emitted_len
    }

    /// Feeds the cumulative `text`, whose last `delta_len` bytes are new. Returns the text to
    /// release and the stop-string match, if one completed in this update (the
    /// earliest-starting one when several did); after a match nothing more is released.
    pub fn update(&mut self, text: &str, delta_len: usize) -> StopUpdate {
        if self.stopped || self.emitted_len > text.len() {
            return StopUpdate::default();
        }
        let delta_start = text.len() - delta_len.min(text.len());
        let from = floor_char_boundary(
            text,
            delta_start
                .saturating_sub(self.max_len.saturating_sub(1))
                .max(self.emitted_len),
        );
        let mut best: Option<(usize, usize)> = None;
        for (stop_index, stop) in self.stops.iter().enumerate() {
            if let Some(pos) = text[from..].find(stop.as_str()) {
                let offset = from + pos;
                if best.is_none_or(|(_, b)| offset < b) {
                    best = Some((stop_index, offset));
                }
            }
        }
        if let Some((stop_index, offset)) = best {
            self.stopped = true;
            let end = if self.include_stop_str_in_output {
                offset + self.stops[stop_index].len()
            } else {
                offset
            };
            let released = self.release(text, end);
            return StopUpdate {
                text: released,
                matched: Some(StopStringMatch { stop_index, offset }),
            };
        }
        let hold = self.partial_suffix_len(text);
        StopUpdate {
            text: self.release(text, text.len() - hold),
            matched: None,
        }
    }

    /// Releases whatever was held back (the request ended without a match).
    pub fn flush(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.release(text, text.len())
    }

    fn release(&mut self, text: &str, end: usize) -> String {
        if end <= self.emitted_len {
            return String::new();
        }
        let out = text[self.emitted_len..end].to_string();
        self.emitted_len = end;
        out
    }

    /// Length of the longest unreleased suffix of `text` that is a proper prefix of a stop.
    fn partial_suffix_len(&self, text: &str) -> usize {
        let longest = self.max_len.saturating_sub(1).min(text.len() - self.emitted_len);
        (1..=longest)
            .rev()
            .find(|&k| {
                let start = text.len() - k;
                text.is_char_boundary(start) && self.stops.iter().any(|s| s.starts_with(&text[start..]))
            })
            .unwrap_or(0)
    }
}

/// The largest char boundary of `text` at or below `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut i = index.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vocab(Vec<Vec<u8>>);

    impl TokenVocab for Vocab {
        fn token_bytes(&self, id: u32) -> &[u8] {
            self.0.get(id as usize).map_or(&[], Vec::as_slice)
        }
        fn is_special(&self, id: u32) -> bool {
            id == 0
        }
    }

    fn vocab() -> Vocab {
        // 0: special, 1..=3: the three bytes of '€', 4: "a", 5: 0xFF (never valid), 6: "é" whole.
        Vocab(vec![
            b"<eos>".to_vec(),
            vec![0xE2],
            vec![0x82],
            vec![0xAC],
            b"a".to_vec(),
            vec![0xFF],
            "é".as_bytes().to_vec(),
        ])
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let v = vocab();
        let mut d = IncrementalDetokenizer::new(true);
        assert_eq!(d.push(&v, 4), "a");
        assert_eq!(d.push(&v, 1), "");
        assert_eq!(d.push(&v, 2), "");
        assert_eq!(d.num_pending_bytes(), 2);
        assert_eq!(d.push(&v, 3), "€");
        assert_eq!(d.push(&v, 6), "é");
        assert_eq!(d.text(), "a€é");
    }

    #[test]
    fn invalid_and_unfinished_bytes_become_replacement_chars() {
        let v = vocab();
        let mut d = IncrementalDetokenizer::new(true);
        assert_eq!(d.push(&v, 5), "\u{FFFD}");
        assert_eq!(d.push(&v, 1), "");
        // A complete char after an unfinished one: the unfinished bytes are invalid.
        assert_eq!(d.push(&v, 4), "\u{FFFD}a");
        assert_eq!(d.push(&v, 1), "");
        assert_eq!(d.push(&v, 2), "");
        assert_eq!(d.flush(), "\u{FFFD}");
        assert_eq!(d.text(), "\u{FFFD}\u{FFFD}a\u{FFFD}");
    }

    #[test]
    fn special_tokens_are_skipped_or_kept() {
        let v = vocab();
        let mut skip = IncrementalDetokenizer::new(true);
        assert_eq!(skip.push(&v, 0), "");
        let mut keep = IncrementalDetokenizer::new(false);
        assert_eq!(keep.push(&v, 0), "<eos>");
    }

    /// Feeds `pieces` one by one; returns the released text and whether a stop matched.
    fn run(stops: &[&str], include: bool, pieces: &[&str]) -> (String, Option<StopStringMatch>) {
        let mut matcher = StopStrings::new(stops.iter().map(|s| s.to_string()).collect(), include);
        let mut text = String::new();
        let mut out = String::new();
        for piece in pieces {
            text.push_str(piece);
            let update = matcher.update(&text, piece.len());
            out.push_str(&update.text);
            if update.matched.is_some() {
                return (out, update.matched);
            }
        }
        out.push_str(&matcher.flush(&text));
        (out, None)
    }

    #[test]
    fn stop_spanning_tokens_is_found_and_excluded() {
        let (out, m) = run(&["STOP"], false, &["ab", "ST", "O", "Pcd"]);
        assert_eq!(out, "ab");
        assert_eq!(
            m,
            Some(StopStringMatch {
                stop_index: 0,
                offset: 2
            })
        );
        let (out, _) = run(&["STOP"], true, &["ab", "ST", "O", "Pcd"]);
        assert_eq!(out, "abSTOP");
    }

    #[test]
    fn partial_matches_are_held_then_released() {
        let mut matcher = StopStrings::new(vec!["STOP".into()], false);
        let update = matcher.update("abST", 4);
        assert_eq!(update.text, "ab");
        let update = matcher.update("abSTx", 1);
        assert_eq!(update.text, "STx");
        let (out, m) = run(&["STOP"], false, &["xS", "T"]);
        assert_eq!((out.as_str(), m), ("xST", None));
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        let (out, m) = run(&["world", "lo w"], false, &["hel", "lo wor", "ld"]);
        assert_eq!(out, "hel");
        assert_eq!(m.map(|m| m.stop_index), Some(1));
        let (out, m) = run(&["€!"], false, &["a€", "€", "!"]);
        assert_eq!(out, "a€");
        assert_eq!(m.map(|m| m.offset), Some(4));
        let (out, m) = run(&["éé"], false, &["aé", "b"]);
        assert_eq!((out.as_str(), m), ("aéb", None));
    }
}
