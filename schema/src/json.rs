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
    let mut in_string = false;
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_string = true,
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
        i += 1;
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
}
