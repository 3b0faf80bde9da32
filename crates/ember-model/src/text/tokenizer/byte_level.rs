//! The GPT-2 byte-to-unicode mapping used by byte-level BPE vocabularies: every byte is
//! written as one printable character so that token texts are valid strings.

use std::sync::OnceLock;

struct Tables {
    byte_to_char: [char; 256],
    char_to_byte: std::collections::HashMap<char, u8>,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut byte_to_char = ['\0'; 256];
        let mut extra = 0u32;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let cp = if printable {
                u32::from(b)
            } else {
                extra += 1;
                255 + extra
            };
            byte_to_char[usize::from(b)] = char::from_u32(cp).unwrap_or('\u{FFFD}');
        }
        let char_to_byte = (0..=255u8).map(|b| (byte_to_char[usize::from(b)], b)).collect();
        Tables {
            byte_to_char,
            char_to_byte,
        }
    })
}

/// The printable character that stands for `byte` in byte-level token texts.
pub fn byte_to_char(byte: u8) -> char {
    tables().byte_to_char[usize::from(byte)]
}

/// Encodes raw bytes as a byte-level token string.
#[cfg(test)]
pub fn encode_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

/// Decodes a byte-level token text back to the raw bytes it stands for. Characters
/// outside the mapping (unusual in byte-level vocabularies) are kept as their UTF-8.
pub fn decode_text(text: &str) -> Vec<u8> {
    let map = &tables().char_to_byte;
    let mut out = Vec::with_capacity(text.len());
    for ch in text.chars() {
        match map.get(&ch) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_round_trips_and_matches_gpt2() {
        assert_eq!(byte_to_char(b' '), '\u{120}'); // "Ġ"
        assert_eq!(byte_to_char(b'\n'), '\u{10A}'); // "Ċ"
        assert_eq!(byte_to_char(b'a'), 'a');
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_text(&encode_bytes(&all)), all);
    }
}
