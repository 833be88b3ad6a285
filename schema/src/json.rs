//! What a JSON text will cost once parsed, known before it is parsed.
//!
//! A tree takes far more memory than its text: `[0,0,…]` costs 16 bytes per text byte,
//! `[{"a":0},…]` 80. Capture measures request bodies and the plugin runtime measures
//! what plugins ask it to decode, in one pass that allocates nothing, and build the tree
//! only once its memory is granted. The same nesting limit holds on both sides of every
//! boundary, so an event one side accepts the other can read.

/// serde_json's own nesting limit (it refuses the 128th level); the measuring pass refuses
/// the same inputs earlier.
pub const MAX_DEPTH: usize = 127;

/// Upper bounds of what serde_json allocates, measured on its `Value` (a slot is 32
/// bytes, a non-empty object at least one B-tree node of about 640, a non-empty array at
/// least four slots), with room for vectors that grew by doubling.
const SLOT_BYTES: usize = 32;
const OBJECT_BYTES: usize = 640;
const KEY_BYTES: usize = 80;
const ARRAY_BYTES: usize = 128;

/// What the tree of a JSON text will cost, from one pass over its bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Measure {
    pub depth: usize,
    pub tree_bytes: usize,
}

/// Nested deeper than [`MAX_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep;

/// Counts structure outside strings. Text that is not JSON is measured too; the parser
/// rejects it afterwards, and the measure only has to be an upper bound.
pub fn measure(text: &[u8]) -> Result<Measure, TooDeep> {
    let (mut depth, mut max_depth) = (0usize, 0usize);
    let (mut objects, mut arrays, mut keys, mut commas) = (0usize, 0usize, 0usize, 0usize);
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        i += 1;
        match c {
            // Most of an event's bytes are inside strings: jump to the next quote or escape.
            b'"' => loop {
                match memchr::memchr2(b'"', b'\\', text.get(i..).unwrap_or_default()) {
                    None => i = text.len(),
                    Some(at) if text[i + at] == b'\\' => {
                        i += at + 2;
                        continue;
                    }
                    Some(at) => i += at + 1,
                }
                break;
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(TooDeep);
                }
                max_depth = max_depth.max(depth);
                if c == b'{' {
                    objects += 1;
                } else {
                    arrays += 1;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' => keys += 1,
            b',' => commas += 1,
            _ => {}
        }
    }
    let tree_bytes = SLOT_BYTES
        .saturating_add(objects.saturating_mul(OBJECT_BYTES))
        .saturating_add(arrays.saturating_mul(ARRAY_BYTES))
        .saturating_add(keys.saturating_mul(KEY_BYTES))
        .saturating_add(commas.saturating_mul(SLOT_BYTES))
        // Strings are copied out of the text, and the text may be copied once to mend
        // lone surrogates.
        .saturating_add(text.len().saturating_mul(2));
    Ok(Measure { depth: max_depth, tree_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measure_bounds_what_the_tree_takes() {
        // Actual peaks measured with a counting allocator: the measure must stay above.
        for (text, actual_per_item) in [("0", 34), ("[0]", 161), ("{\"a\":0}", 667), ("{\"a\":{\"b\":[1]}}", 1428)] {
            let n = 10_000;
            let body = format!("[{}]", vec![text; n].join(","));
            let m = measure(body.as_bytes()).unwrap();
            assert!(m.tree_bytes >= n * actual_per_item, "{text}: {} < {}", m.tree_bytes, n * actual_per_item);
        }
        let strings = r#"["a,b:{[c", "\"]}"]"#;
        assert_eq!(measure(strings.as_bytes()).unwrap().depth, 1, "structure inside strings is not counted");
    }

    /// The byte-at-a-time scan the fast one must agree with.
    fn measure_slowly(text: &[u8]) -> Result<Measure, TooDeep> {
        let (mut depth, mut max_depth, mut counts) = (0usize, 0usize, [0usize; 4]);
        let mut in_string = false;
        let mut i = 0;
        while i < text.len() {
            match (in_string, text[i]) {
                (true, b'\\') => i += 1,
                (true, b'"') | (false, b'"') => in_string = !in_string,
                (true, _) => {}
                (false, c @ (b'{' | b'[')) => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(TooDeep);
                    }
                    max_depth = max_depth.max(depth);
                    counts[usize::from(c == b'[')] += 1;
                }
                (false, b'}' | b']') => depth = depth.saturating_sub(1),
                (false, b':') => counts[2] += 1,
                (false, b',') => counts[3] += 1,
                _ => {}
            }
            i += 1;
        }
        let [objects, arrays, keys, commas] = counts;
        let tree_bytes = SLOT_BYTES
            + objects * OBJECT_BYTES
            + arrays * ARRAY_BYTES
            + keys * KEY_BYTES
            + commas * SLOT_BYTES
            + text.len() * 2;
        Ok(Measure { depth: max_depth, tree_bytes })
    }

    #[test]
    fn the_fast_scan_agrees_with_the_byte_at_a_time_one() {
        let cases: [&[u8]; 10] = [
            br#"{"a":"b\"c,d:{","e":[1,2,{"f":"\\"}]}"#,
            br#"["\\\"",{"x":"]"}]"#,
            br#"{"open":"never closed, {[:"#,
            br#"{"ends in an escape":"\"#,
            b"\"\\",
            b"",
            br#"[[[[]]]],{},"",:"#,
            br#"{"k":"\u00e9\ud800","l":[true,false,null,1.5e3]}"#,
            "{\"\u{e9}\u{1f600}\":\"\u{20ac}\"}".as_bytes(),
            br#"not json at all: {a:[b,c]}"#,
        ];
        for text in cases {
            assert_eq!(measure(text), measure_slowly(text), "{}", String::from_utf8_lossy(text));
        }
        // And on noise: every prefix of a mixed body.
        let body = br#"[{"event":"$pageview","properties":{"$current_url":"https://x/?q=\"a,b\"","n":[1,{"m":"}"}]}}]"#;
        for end in 0..=body.len() {
            assert_eq!(measure(&body[..end]), measure_slowly(&body[..end]), "prefix {end}");
        }
    }
}
