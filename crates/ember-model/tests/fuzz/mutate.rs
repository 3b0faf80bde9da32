//! Mutations of a valid file: every single-field corruption (each header field set to each
//! interesting value of its kind), truncations, and random byte flips.

use super::Rng;

/// How a header field is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// Little-endian u32.
    U32,
    /// Little-endian u64.
    U64,
    /// Little-endian f32.
    F32,
}

/// One field of a header: where it is and how it is stored.
#[derive(Clone, Debug)]
pub struct Field {
    /// What it is, for reports.
    pub name: String,
    /// Byte offset in the file.
    pub offset: usize,
    /// Its encoding.
    pub kind: FieldKind,
}

/// One mutated file and what was done to it.
pub struct Mutant {
    /// What was changed, for reports.
    pub description: String,
    /// The mutated bytes.
    pub bytes: Vec<u8>,
}

/// The interesting values of an integer field whose valid value is `orig`.
fn int_values(orig: u64, max: u64) -> Vec<u64> {
    let mut values = vec![
        0,
        1,
        2,
        3,
        33,
        255,
        (1 << 28) + 1,
        i32::MAX as u64,
        u32::MAX as u64,
        1 << 32,
        1 << 40,
        i64::MAX as u64,
        1 << 63,
        u64::MAX,
        orig.wrapping_add(1),
        orig.wrapping_sub(1),
        orig.wrapping_mul(2),
        u64::MAX - orig,
    ];
    values.retain(|&v| v <= max && v != orig);
    values.sort_unstable();
    values.dedup();
    values
}

const FLOAT_VALUES: [f32; 11] = [
    0.0,
    -0.0,
    -1.0,
    1e-38,
    1e30,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    f32::MAX,
    f32::MIN_POSITIVE,
    -1e-5,
];

/// Every single-field corruption of `bytes`: each field set to each interesting value.
pub fn field_corruptions(bytes: &[u8], fields: &[Field]) -> Vec<Mutant> {
    let mut out = Vec::new();
    for field in fields {
        let at = field.offset;
        let encoded: Vec<Vec<u8>> = match field.kind {
            FieldKind::U32 => {
                let orig = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
                int_values(u64::from(orig), u64::from(u32::MAX))
                    .into_iter()
                    .map(|v| (v as u32).to_le_bytes().to_vec())
                    .collect()
            }
            FieldKind::U64 => {
                let orig = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
                int_values(orig, u64::MAX)
                    .into_iter()
                    .map(|v| v.to_le_bytes().to_vec())
                    .collect()
            }
            FieldKind::F32 => FLOAT_VALUES.iter().map(|v| v.to_le_bytes().to_vec()).collect(),
        };
        for raw in encoded {
            let mut mutated = bytes.to_vec();
            mutated[at..at + raw.len()].copy_from_slice(&raw);
            out.push(Mutant {
                description: format!("{} = {:02x?}", field.name, raw),
                bytes: mutated,
            });
        }
    }
    out
}

/// Truncations at every field boundary (and one byte past it), then at `num_random` random lengths.
pub fn truncations(bytes: &[u8], fields: &[Field], num_random: usize, rng: &mut Rng) -> Vec<Mutant> {
    let mut lengths: Vec<usize> = fields.iter().flat_map(|f| [f.offset, f.offset + 1]).collect();
    lengths.extend((0..num_random).map(|_| rng.below(bytes.len())));
    lengths.extend([0, 1, 4, 8]);
    lengths.sort_unstable();
    lengths.dedup();
    lengths
        .into_iter()
        .filter(|&len| len < bytes.len())
        .map(|len| Mutant {
            description: format!("truncated to {len} bytes"),
            bytes: bytes[..len].to_vec(),
        })
        .collect()
}

/// One random corruption: 1 to 8 bytes set to random values, mostly inside the first
/// `header_len` bytes (where a flip changes structure), sometimes anywhere.
pub fn byte_flips(bytes: &[u8], header_len: usize, rng: &mut Rng) -> Mutant {
    let mut mutated = bytes.to_vec();
    let num_flips = 1 + rng.below(8);
    let mut at = Vec::with_capacity(num_flips);
    for _ in 0..num_flips {
        let span = if rng.below(5) == 0 {
            bytes.len()
        } else {
            header_len.max(1)
        };
        let pos = rng.below(span);
        mutated[pos] = match rng.below(4) {
            0 => mutated[pos] ^ (1 << rng.below(8)),
            1 => 0xFF,
            2 => 0,
            _ => (rng.next_u64() & 0xFF) as u8,
        };
        at.push(pos);
    }
    Mutant {
        description: format!("random bytes at {at:?}"),
        bytes: mutated,
    }
}
