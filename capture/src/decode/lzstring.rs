//! posthog-js's legacy `lz64` encoding (`LZString.compressToBase64`), decoded with a bound.
//!
//! Written here rather than taken from a crate because the decoder must stop at the
//! decompressed limit: LZ-string expands quadratically in the worst case, and the crates
//! build the whole output (and a dictionary of copied strings) before anyone can check
//! it. Dictionary entries here are ranges into the output, so memory is linear in the
//! output, and the output stops growing at the limit.

use crate::budget::{BudgetError, Reservation};

#[derive(Debug, PartialEq, Eq)]
pub(super) enum LzError {
    Invalid,
    /// The output went over `limit` bytes of UTF-8.
    TooLarge,
    /// The output or the dictionary did not get its memory.
    Memory(BudgetError),
}

impl From<BudgetError> for LzError {
    fn from(e: BudgetError) -> Self {
        LzError::Memory(e)
    }
}

/// The decoded UTF-16 units, checked against the limit and the memory reservation.
struct Output<'m> {
    units: Vec<u16>,
    utf8_bytes: usize,
    limit: usize,
    memory: &'m mut Reservation,
}

impl Output<'_> {
    fn push(&mut self, unit: u16) -> Result<(), LzError> {
        self.utf8_bytes += utf8_len(unit);
        if self.utf8_bytes > self.limit {
            return Err(LzError::TooLarge);
        }
        self.memory.make_room(&mut self.units, 1)?;
        self.units.push(unit);
        Ok(())
    }

    /// Copies `len` units from `start`: they are already in the output.
    fn repeat(&mut self, start: usize, len: usize) -> Result<(), LzError> {
        for i in start..start + len {
            let unit = self.units[i];
            self.push(unit)?;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.units.len()
    }

    fn into_string(self) -> Result<String, LzError> {
        self.memory.hold(self.utf8_bytes)?;
        Ok(String::from_utf16_lossy(&self.units))
    }
}

/// Position in the reference key `A-Z a-z 0-9 + / =`. Spaces are `+` that went through
/// form decoding; unknown characters read as 0, as in the reference implementation.
fn value_of(c: u8) -> u32 {
    (match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b' ' => 62,
        b'/' => 63,
        b'=' => 64,
        _ => 0,
    }) as u32
}

struct Bits<'a> {
    input: &'a [u8],
    val: u32,
    position: u32,
    index: usize,
}

impl Bits<'_> {
    const RESET: u32 = 32;

    fn next_value(&self, i: usize) -> u32 {
        self.input.get(i).map_or(0, |&c| value_of(c))
    }

    fn read(&mut self, n: u32) -> u32 {
        let mut bits = 0;
        for power in 0..n {
            let set = self.val & self.position != 0;
            self.position >>= 1;
            if self.position == 0 {
                self.position = Self::RESET;
                self.val = self.next_value(self.index);
                self.index += 1;
            }
            bits |= (set as u32) << power;
        }
        bits
    }
}

/// UTF-8 length of a UTF-16 unit, counting each surrogate half as 3 (an overestimate,
/// which only makes the limit a little stricter).
fn utf8_len(unit: u16) -> usize {
    match unit {
        0..=0x7f => 1,
        0x80..=0x7ff => 2,
        _ => 3,
    }
}

/// Decodes `LZString.compressToBase64` output, failing once the text passes `limit` bytes
/// or its memory (output and dictionary) cannot be reserved.
pub(super) fn decompress_from_base64(input: &[u8], limit: usize, memory: &mut Reservation) -> Result<String, LzError> {
    if input.is_empty() {
        return Err(LzError::Invalid);
    }
    let mut bits = Bits { input, val: value_of(input[0]), position: Bits::RESET, index: 1 };
    let mut out = Output { units: Vec::new(), utf8_bytes: 0, limit, memory };
    // (start, len) in `out`; the first three codes are control codes, never entries.
    let mut dict: Vec<(usize, usize)> = vec![(0, 0); 3];
    let mut enlarge_in: u32 = 4;
    let mut num_bits: u32 = 3;

    let first = match bits.read(2) {
        0 => bits.read(8) as u16,
        1 => bits.read(16) as u16,
        2 => return Ok(String::new()),
        _ => return Err(LzError::Invalid),
    };
    dict.push((0, 1));
    out.push(first)?;
    let mut w = (0usize, 1usize);

    loop {
        if bits.index > input.len() {
            return Err(LzError::Invalid);
        }
        let c = bits.read(num_bits) as usize;
        // Every code adds at most two entries.
        out.memory.make_room(&mut dict, 2)?;
        match c {
            0 | 1 => {
                let unit = bits.read(if c == 0 { 8 } else { 16 }) as u16;
                // The literal is emitted right below, so its entry is where it will land.
                dict.push((out.len(), 1));
                enlarge_in -= 1;
                if enlarge_in == 0 {
                    enlarge_in = 1 << num_bits;
                    num_bits += 1;
                }
                out.push(unit)?;
                let entry = (out.len() - 1, 1);
                dict.push((w.0, w.1 + 1));
                w = entry;
            }
            2 => return out.into_string(),
            _ => {
                if enlarge_in == 0 {
                    enlarge_in = 1 << num_bits;
                    num_bits += 1;
                }
                let start = out.len();
                if c < dict.len() {
                    let (s, len) = dict[c];
                    out.repeat(s, len)?;
                } else if c == dict.len() {
                    // The entry being defined right now: w followed by w's first unit.
                    out.repeat(w.0, w.1)?;
                    out.repeat(w.0, 1)?;
                } else {
                    return Err(LzError::Invalid);
                }
                let entry = (start, out.len() - start);
                // `w + entry[0]` is contiguous in the output: entry follows w directly.
                dict.push((w.0, w.1 + 1));
                w = entry;
            }
        }
        enlarge_in -= 1;
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::budget::MemoryBudget;

    fn compress(s: &str) -> String {
        lz_str::compress_to_base64(s)
    }

    fn decompress(input: &[u8], limit: usize) -> Result<String, LzError> {
        decompress_from_base64(input, limit, &mut MemoryBudget::new(1 << 30, 1 << 30).reservation())
    }

    #[test]
    fn round_trips_reference_output() {
        for text in [
            "a",
            r#"[{"event":"$pageview","properties":{"distinct_id":"u1","token":"phc_x"}}]"#,
            "héllo wörld — ☃ 𝄞 emoji 🎉 and more text text text text",
            &"abcabcabcabd".repeat(500),
            &(0..3000).map(|i| char::from_u32(32 + (i * 7919) % 5000).unwrap_or('x')).collect::<String>(),
        ] {
            let encoded = compress(text);
            assert_eq!(decompress(encoded.as_bytes(), usize::MAX).unwrap(), text, "{text:.40}");
        }
    }

    #[test]
    fn spaces_read_as_plus() {
        let text = r#"{"event":"e","properties":{"x":"????>>>>~~~~"}}"#.repeat(20);
        let encoded = compress(&text);
        assert!(encoded.contains('+') || encoded.contains('/'));
        let mangled = encoded.replace('+', " ");
        assert_eq!(decompress(mangled.as_bytes(), usize::MAX).unwrap(), text);
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        let encoded = compress(&"a".repeat(400_000));
        assert!(encoded.len() < 2_000, "compresses to {} bytes", encoded.len());
        assert_eq!(decompress(encoded.as_bytes(), 100_000), Err(LzError::TooLarge));
        assert_eq!(decompress(encoded.as_bytes(), 400_000).unwrap().len(), 400_000);
    }

    #[test]
    fn output_and_dictionary_stay_inside_the_reservation() {
        // Incompressible text: one dictionary entry per unit or so, the dictionary's worst case.
        let text: String = (0..200_000u32).map(|i| char::from_u32(0x4e00 + (i * 7919) % 20_000).unwrap()).collect();
        let encoded = compress(&text);
        let budget = MemoryBudget::new(64 << 20, 1 << 20);
        let err = decompress_from_base64(encoded.as_bytes(), usize::MAX, &mut budget.reservation()).unwrap_err();
        assert_eq!(err, LzError::Memory(BudgetError::RequestTooLarge { limit: 1 << 20 }));
        let mut enough = MemoryBudget::new(64 << 20, 64 << 20).reservation();
        assert_eq!(decompress_from_base64(encoded.as_bytes(), usize::MAX, &mut enough).unwrap(), text);
        assert!(enough.held() > 600_000 * 2, "output and dictionary were reserved: {}", enough.held());
    }

    #[test]
    fn garbage_and_truncation_are_invalid() {
        assert_eq!(decompress(b"", 100), Err(LzError::Invalid));
        let encoded = compress(&"some event text ".repeat(50));
        let truncated = &encoded.as_bytes()[..encoded.len() / 2];
        assert_eq!(decompress(truncated, usize::MAX), Err(LzError::Invalid));
        assert!(decompress(b"{\"event\": \"not lz\"}", usize::MAX).is_err());
    }
}
