//! posthog-js's legacy `lz64` encoding (`LZString.compressToBase64`), decoded with a bound.
//!
//! Written here rather than taken from a crate because the decoder must stop at the
//! decompressed limit: LZ-string expands quadratically in the worst case, and the crates
//! build the whole output (and a dictionary of copied strings) before anyone can check
//! it. Dictionary entries here are ranges into the output, so memory is linear in the
//! output, and the output stops growing at the limit.

/// The output went over `limit` bytes of UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub enum LzError {
    Invalid,
    TooLarge,
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

/// Decodes `LZString.compressToBase64` output, failing once the text passes `limit` bytes.
pub fn decompress_from_base64(input: &[u8], limit: usize) -> Result<String, LzError> {
    if input.is_empty() {
        return Err(LzError::Invalid);
    }
    let mut bits = Bits { input, val: value_of(input[0]), position: Bits::RESET, index: 1 };
    let mut out: Vec<u16> = Vec::new();
    let mut out_bytes = 0usize;
    // (start, len) in `out`; the first three codes are control codes, never entries.
    let mut dict: Vec<(usize, usize)> = vec![(0, 0); 3];
    let mut enlarge_in: u32 = 4;
    let mut num_bits: u32 = 3;

    let mut push_unit = |out: &mut Vec<u16>, unit: u16| -> Result<(), LzError> {
        out_bytes += utf8_len(unit);
        if out_bytes > limit {
            return Err(LzError::TooLarge);
        }
        out.push(unit);
        Ok(())
    };

    let first = match bits.read(2) {
        0 => bits.read(8) as u16,
        1 => bits.read(16) as u16,
        2 => return Ok(String::new()),
        _ => return Err(LzError::Invalid),
    };
    dict.push((0, 1));
    push_unit(&mut out, first)?;
    let mut w = (0usize, 1usize);

    loop {
        if bits.index > input.len() {
            return Err(LzError::Invalid);
        }
        let c = bits.read(num_bits) as usize;
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
                push_unit(&mut out, unit)?;
                let entry = (out.len() - 1, 1);
                dict.push((w.0, w.1 + 1));
                w = entry;
            }
            2 => return Ok(String::from_utf16_lossy(&out)),
            _ => {
                if enlarge_in == 0 {
                    enlarge_in = 1 << num_bits;
                    num_bits += 1;
                }
                let start = out.len();
                if c < dict.len() {
                    let (s, len) = dict[c];
                    for i in s..s + len {
                        let unit = out[i];
                        push_unit(&mut out, unit)?;
                    }
                } else if c == dict.len() {
                    // The entry being defined right now: w followed by w's first unit.
                    for i in w.0..w.0 + w.1 {
                        let unit = out[i];
                        push_unit(&mut out, unit)?;
                    }
                    let unit = out[w.0];
                    push_unit(&mut out, unit)?;
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

    fn compress(s: &str) -> String {
        lz_str::compress_to_base64(s)
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
            assert_eq!(decompress_from_base64(encoded.as_bytes(), usize::MAX).unwrap(), text, "{text:.40}");
        }
    }

    #[test]
    fn spaces_read_as_plus() {
        let text = r#"{"event":"e","properties":{"x":"????>>>>~~~~"}}"#.repeat(20);
        let encoded = compress(&text);
        assert!(encoded.contains('+') || encoded.contains('/'));
        let mangled = encoded.replace('+', " ");
        assert_eq!(decompress_from_base64(mangled.as_bytes(), usize::MAX).unwrap(), text);
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        let encoded = compress(&"a".repeat(400_000));
        assert!(encoded.len() < 2_000, "compresses to {} bytes", encoded.len());
        assert_eq!(decompress_from_base64(encoded.as_bytes(), 100_000), Err(LzError::TooLarge));
        assert_eq!(decompress_from_base64(encoded.as_bytes(), 400_000).unwrap().len(), 400_000);
    }

    #[test]
    fn garbage_and_truncation_are_invalid() {
        assert_eq!(decompress_from_base64(b"", 100), Err(LzError::Invalid));
        let encoded = compress(&"some event text ".repeat(50));
        let truncated = &encoded.as_bytes()[..encoded.len() / 2];
        assert_eq!(decompress_from_base64(truncated, usize::MAX), Err(LzError::Invalid));
        assert!(decompress_from_base64(b"{\"event\": \"not lz\"}", usize::MAX).is_err());
    }
}
