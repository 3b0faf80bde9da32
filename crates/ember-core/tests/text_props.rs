//! Property tests of incremental detokenization and stop-string matching against
//! whole-text references.

use ember_core::{IncrementalDetokenizer, StopStrings, TokenVocab};
use proptest::prelude::*;

/// Token `i` is the `i`-th byte string of the list.
struct Vocab(Vec<Vec<u8>>);

impl TokenVocab for Vocab {
    fn token_bytes(&self, id: u32) -> &[u8] {
        &self.0[id as usize]
    }
    fn is_special(&self, _id: u32) -> bool {
        false
    }
}

fn text_pieces() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "é", "€", "ab", "ba", "😀", "b€"]),
        0..20,
    )
    .prop_map(|v| v.into_iter().map(String::from).collect())
}

proptest! {
    #[test]
    fn incremental_decode_equals_lossy_decode_of_all_bytes(
        tokens in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..30),
        utf8 in text_pieces(),
    ) {
        // Mix arbitrary bytes with byte-split valid characters.
        let mut vocab: Vec<Vec<u8>> = tokens;
        for piece in &utf8 {
            let bytes = piece.as_bytes();
            let mid = bytes.len() / 2;
            vocab.push(bytes[..mid].to_vec());
            vocab.push(bytes[mid..].to_vec());
        }
        let vocab = Vocab(vocab);
        let mut d = IncrementalDetokenizer::new(true);
        let mut out = String::new();
        let mut all = Vec::new();
        for id in 0..vocab.0.len() as u32 {
            out.push_str(&d.push(&vocab, id));
            all.extend_from_slice(vocab.token_bytes(id));
            prop_assert!(d.num_pending_bytes() <= 3);
        }
        out.push_str(&d.flush());
        prop_assert_eq!(&out, &String::from_utf8_lossy(&all).into_owned());
        prop_assert_eq!(d.text(), out.as_str());
    }

    #[test]
    fn stop_strings_cut_at_the_earliest_match(
        pieces in text_pieces(),
        stops in prop::collection::vec(prop::sample::select(vec!["ab", "éa", "b€b", "😀", "aaa", "€"]), 1..3),
        include in any::<bool>(),
    ) {
        let stops: Vec<String> = stops.into_iter().map(String::from).collect();
        // Streaming semantics: the request stops at the first update in which some stop
        // string is complete; among those, the earliest-starting one wins.
        let mut full = String::new();
        let mut earliest = None;
        for piece in &pieces {
            full.push_str(piece);
            earliest = stops
                .iter()
                .filter_map(|s| full.find(s.as_str()).map(|pos| (pos, s.len())))
                .min_by_key(|&(pos, _)| pos);
            if earliest.is_some() {
                break;
            }
        }
        let expected = match earliest {
            Some((pos, len)) if include => &full[..pos + len],
            Some((pos, _)) => &full[..pos],
            None => full.as_str(),
        };
        let mut matcher = StopStrings::new(stops, include);
        let mut text = String::new();
        let mut out = String::new();
        let mut matched = false;
        for piece in &pieces {
            text.push_str(piece);
            let update = matcher.update(&text, piece.len());
            out.push_str(&update.text);
            prop_assert!(expected.starts_with(&out), "released {:?} beyond {:?}", out, expected);
            if update.matched.is_some() {
                matched = true;
                break;
            }
        }
        if !matched {
            out.push_str(&matcher.flush(&text));
        }
        prop_assert_eq!(matched, earliest.is_some());
        prop_assert_eq!(out.as_str(), expected);
    }
}
