//! Stage 1: from a request's payload, whatever its encoding, to JSON text.
//!
//! SDKs disagree on how they say what they sent (query `compression`, a form field,
//! `Content-Encoding`) and sometimes say it wrong, so the bytes themselves decide where
//! they can: a gzip stream is recognised by its magic number whatever the hint. Every
//! decoder stops at the decompressed limit, and every buffer it fills is reserved in the
//! request's memory reservation before it grows, so a small bomb cannot take the process
//! down, nor can many of them at once.

mod lzstring;

use std::io::Read;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use bytes::Bytes;
use flate2::read::{MultiGzDecoder, ZlibDecoder};

use crate::budget::{BudgetError, Reservation};
use crate::request::RequestMeta;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Gzip,
    LzString,
    Base64,
    /// zlib-wrapped deflate (RFC 1950), as `Content-Encoding: deflate` means in practice
    /// (posthog-python, posthog-go and posthog-rs send it so on the v1 endpoint).
    Deflate,
    Zstd,
}

impl Encoding {
    /// Reads a compression hint; unknown values are no hint at all, never an error.
    pub(crate) fn from_hint(hint: &str) -> Option<Encoding> {
        match hint.trim().to_ascii_lowercase().as_str() {
            "gzip" | "gzip-js" | "x-gzip" => Some(Encoding::Gzip),
            "lz64" | "lz-string" | "lzstring" => Some(Encoding::LzString),
            "base64" | "b64" => Some(Encoding::Base64),
            "deflate" => Some(Encoding::Deflate),
            "zstd" => Some(Encoding::Zstd),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("request has no payload: send events in the body or in the `data` parameter")]
    Empty,
    #[error("payload is not valid gzip: {0}")]
    Gzip(String),
    #[error("payload is not valid lz64 (lz-string base64)")]
    LzString,
    #[error("payload is not valid base64: {0}")]
    Base64(String),
    #[error("payload is not valid deflate (zlib): {0}")]
    Deflate(String),
    #[error("payload is not valid zstd: {0}")]
    Zstd(String),
    #[error("payload is larger than {limit} bytes once decoded")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Memory(#[from] BudgetError),
}

impl DecodeError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty_payload",
            DecodeError::Gzip(_) => "invalid_gzip",
            DecodeError::LzString => "invalid_lz64",
            DecodeError::Base64(_) => "invalid_base64",
            DecodeError::Deflate(_) => "invalid_deflate",
            DecodeError::Zstd(_) => "invalid_zstd",
            DecodeError::TooLarge { .. } => "payload_too_large",
            DecodeError::Memory(e) => e.code(),
        }
    }
}

/// The decoded payload and what it took to get there, for metrics.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub json: Bytes,
    pub received_bytes: usize,
}

/// Picks the payload (query `data`, form `data`, or the body) and decodes it.
pub(crate) fn decode(
    meta: &RequestMeta,
    body: Bytes,
    limit: usize,
    memory: &mut Reservation,
) -> Result<Decoded, DecodeError> {
    let received_bytes = body.len();
    let mut form_compression = None;
    let payload = if let Some(data) = &meta.query.data {
        memory.hold(data.len())?;
        Bytes::from(data.clone().into_bytes())
    } else if meta.is_form {
        let mut data = None;
        for (k, v) in form_urlencoded::parse(&body) {
            match &*k {
                "data" => {
                    memory.hold(v.len())?;
                    data = Some(v.into_owned());
                }
                "compression" => form_compression = Some(v.into_owned()),
                _ => {}
            }
        }
        // A "form" without a `data` field is a client (curl -d, say) that labelled a raw
        // body as a form: read the body for what it is.
        match data {
            Some(d) => Bytes::from(d.into_bytes()),
            None => body,
        }
    } else {
        body
    };
    let hint = [meta.query.compression.as_deref(), form_compression.as_deref(), meta.content_encoding.as_deref()]
        .into_iter()
        .flatten()
        .find_map(Encoding::from_hint);
    let json = decode_payload(payload, hint, meta.route.sniffs_base64(), limit, memory)?;
    Ok(Decoded { json, received_bytes })
}

/// Decodes one payload given the hint; pure, so every rule is testable on bytes.
pub(crate) fn decode_payload(
    payload: Bytes,
    hint: Option<Encoding>,
    sniff_base64: bool,
    limit: usize,
    memory: &mut Reservation,
) -> Result<Bytes, DecodeError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    if payload.starts_with(&GZIP_MAGIC) {
        return gunzip(&payload, limit, memory);
    }
    // JSON never starts with these bytes, so the frame is recognised whatever the hint.
    if payload.starts_with(&ZSTD_MAGIC) {
        let decoder = zstd::stream::read::Decoder::new(&payload[..]).map_err(|e| DecodeError::Zstd(e.to_string()))?;
        return inflate(decoder, payload.len().saturating_mul(4), limit, memory, DecodeError::Zstd);
    }
    match hint {
        Some(Encoding::Deflate) => inflate(
            ZlibDecoder::new(&payload[..]),
            payload.len().saturating_mul(4),
            limit,
            memory,
            DecodeError::Deflate,
        ),
        Some(Encoding::Zstd) => Err(DecodeError::Zstd("no zstd frame".to_string())),
        Some(Encoding::LzString) => lzstring::decompress_from_base64(trim_ascii(&payload), limit, memory)
            .map(|text| Bytes::from(text.into_bytes()))
            .map_err(|e| match e {
                lzstring::LzError::Invalid => DecodeError::LzString,
                lzstring::LzError::TooLarge => DecodeError::TooLarge { limit },
                lzstring::LzError::Memory(e) => DecodeError::Memory(e),
            }),
        Some(Encoding::Base64) => base64_then_maybe_gunzip(&payload, limit, memory),
        // A gzip hint without the magic number: a proxy already decompressed it, or the
        // client lied. The bytes are read for what they are.
        Some(Encoding::Gzip) | None => {
            if sniff_base64 && looks_like_base64(&payload) {
                base64_then_maybe_gunzip(&payload, limit, memory)
            } else if payload.len() > limit {
                Err(DecodeError::TooLarge { limit })
            } else {
                Ok(payload)
            }
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

fn gunzip(payload: &[u8], limit: usize, memory: &mut Reservation) -> Result<Bytes, DecodeError> {
    // The trailer's ISIZE is the last member's size: exact for the one-member bodies SDKs
    // send, only a first guess for anything else, and never believed past what deflate
    // can expand the input to.
    let isize = payload.len().checked_sub(4).map(|at| {
        let trailer: [u8; 4] = payload[at..].try_into().expect("four bytes");
        u32::from_le_bytes(trailer) as usize
    });
    let guess = isize.unwrap_or(0).min(payload.len().saturating_mul(MAX_DEFLATE_RATIO));
    inflate(MultiGzDecoder::new(payload), guess, limit, memory, DecodeError::Gzip)
}

/// Deflate's best case is about 1032:1; a claimed size beyond that is a lie.
const MAX_DEFLATE_RATIO: usize = 1032;

/// Decompresses into room reserved before it is allocated: first what `guess` says the
/// output takes (plus a byte, so the end is seen without growing), then doubling steps of
/// at most `MAX_STEP`. Only what the decoder writes is initialised, so a small event
/// costs a buffer of its own size, not a step's.
fn inflate(
    reader: impl Read,
    guess: usize,
    limit: usize,
    memory: &mut Reservation,
    invalid: fn(String) -> DecodeError,
) -> Result<Bytes, DecodeError> {
    const MIN_STEP: usize = 4 * 1024;
    const MAX_STEP: usize = 1024 * 1024;
    let mut reader = reader.take(limit as u64 + 1);
    let mut out: Vec<u8> = Vec::new();
    let mut step = guess.min(limit).saturating_add(1).max(MIN_STEP);
    loop {
        if let Err(e) = memory.make_room(&mut out, step) {
            // A guess, or a doubling, is not what the output needs yet: the refusal comes
            // only when the smallest step cannot be had.
            if step <= MIN_STEP {
                return Err(e.into());
            }
            step = MIN_STEP;
            continue;
        }
        let room = out.capacity() - out.len();
        let n = match (&mut reader).take(room as u64).read_to_end(&mut out) {
            Ok(n) => n,
            Err(e) => return Err(invalid(e.to_string())),
        };
        if out.len() > limit {
            return Err(DecodeError::TooLarge { limit });
        }
        if n < room {
            return Ok(Bytes::from(out));
        }
        step = step.saturating_mul(2).min(MAX_STEP);
    }
}

/// Standard or URL-safe alphabet, padding optional.
fn base64_engine(url_safe: bool) -> GeneralPurpose {
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    GeneralPurpose::new(if url_safe { &alphabet::URL_SAFE } else { &alphabet::STANDARD }, config)
}

fn base64_then_maybe_gunzip(payload: &[u8], limit: usize, memory: &mut Reservation) -> Result<Bytes, DecodeError> {
    if payload.len() / 4 * 3 > limit.saturating_add(3) {
        return Err(DecodeError::TooLarge { limit });
    }
    // The cleaned copy, then the decoded bytes.
    memory.hold(payload.len() + payload.len() / 4 * 3 + 3)?;
    // A `+` sent in a form without percent-encoding arrives as a space.
    let cleaned: Vec<u8> = payload
        .iter()
        .filter(|c| !matches!(c, b'\n' | b'\r' | b'\t'))
        .map(|&c| if c == b' ' { b'+' } else { c })
        .collect();
    let cleaned = trim_ascii(&cleaned);
    let url_safe = cleaned.iter().any(|c| matches!(c, b'-' | b'_'));
    let decoded = base64_engine(url_safe).decode(cleaned).map_err(|e| DecodeError::Base64(e.to_string()))?;
    if decoded.starts_with(&GZIP_MAGIC) {
        return gunzip(&decoded, limit, memory);
    }
    if decoded.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(Bytes::from(decoded))
}

/// Old SDKs send base64 without saying so. JSON never starts with a base64 letter
/// other than the literals, and base64 never contains `{`, `"` or `:`.
fn looks_like_base64(payload: &[u8]) -> bool {
    let t = trim_ascii(payload);
    t.len() >= 4
        && !matches!(t[0], b'{' | b'[' | b'"')
        && !t.starts_with(b"true")
        && !t.starts_with(b"false")
        && !t.starts_with(b"null")
        && t.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_' | b' ' | b'\n' | b'\r'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    const LIMIT: usize = 1024 * 1024;
    const JSON: &str = r#"[{"event":"$pageview","properties":{"distinct_id":"u1","token":"phc_abc"}}]"#;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }
    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }
    fn plenty() -> Reservation {
        MemoryBudget::new(1 << 30, 1 << 30).reservation()
    }
    fn dec(payload: impl Into<Vec<u8>>, hint: Option<Encoding>, sniff: bool) -> Result<String, DecodeError> {
        decode_payload(Bytes::from(payload.into()), hint, sniff, LIMIT, &mut plenty())
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn hints() {
        assert_eq!(Encoding::from_hint("gzip-js"), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_hint("GZIP"), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_hint("lz64"), Some(Encoding::LzString));
        assert_eq!(Encoding::from_hint("lz-string"), Some(Encoding::LzString));
        assert_eq!(Encoding::from_hint("b64"), Some(Encoding::Base64));
        assert_eq!(Encoding::from_hint("brotli-of-the-future"), None);
    }

    #[test]
    fn plain_json_passes_through() {
        assert_eq!(dec(JSON, None, true).unwrap(), JSON);
        assert_eq!(dec(JSON, Some(Encoding::Gzip), false).unwrap(), JSON, "a wrong gzip hint is not fatal");
    }

    #[test]
    fn gzip_is_sniffed_whatever_the_hint() {
        for hint in [None, Some(Encoding::Gzip), Some(Encoding::Base64), Some(Encoding::LzString)] {
            assert_eq!(dec(gzip(JSON.as_bytes()), hint, false).unwrap(), JSON, "{hint:?}");
        }
    }

    #[test]
    fn concatenated_gzip_members_are_all_read() {
        let mut two = gzip(b"[{\"a\":1},");
        two.extend(gzip(b"{\"b\":2}]"));
        assert_eq!(dec(two, None, false).unwrap(), "[{\"a\":1},{\"b\":2}]");
    }

    #[test]
    fn corrupt_gzip_names_the_encoding() {
        let mut g = gzip(JSON.as_bytes());
        let n = g.len();
        g[n / 2] ^= 0xff;
        g.truncate(n - 4);
        let err = dec(g, None, false).unwrap_err();
        assert!(matches!(err, DecodeError::Gzip(_)), "{err:?}");
        assert_eq!(err.code(), "invalid_gzip");
    }

    #[test]
    fn gzip_bomb_hits_the_cap() {
        let bomb = gzip(&vec![b' '; 20 * LIMIT]);
        assert!(bomb.len() < 100_000);
        assert_eq!(dec(bomb, None, false).unwrap_err(), DecodeError::TooLarge { limit: LIMIT });
    }

    #[test]
    fn a_gzip_body_takes_about_its_own_size_whatever_its_trailer_claims() {
        // One member: the trailer's size is exact, so one buffer of that size is reserved.
        let event = format!(r#"{{"event":"$pageview","properties":{{"pad":"{}"}}}}"#, "x".repeat(3_000));
        let mut r = plenty();
        let out = decode_payload(Bytes::from(gzip(event.as_bytes())), None, false, LIMIT, &mut r).unwrap();
        assert_eq!(out.len(), event.len());
        assert!(r.held() <= 8 * 1024, "{} held for {} bytes", r.held(), event.len());

        // Two members: the trailer names only the small last one; the rest is read in
        // doubling steps, all of it.
        let big = "y".repeat(300_000);
        let two = [gzip(big.as_bytes()), gzip(b"z")].concat();
        let out = decode_payload(Bytes::from(two), None, false, LIMIT, &mut plenty()).unwrap();
        assert_eq!(out.len(), big.len() + 1);

        // A guess the request cannot afford falls back to small steps instead of refusing.
        let small_cap = MemoryBudget::new(1 << 30, 64 * 1024);
        let zeros = gzip(&vec![b'0'; 40_000]);
        let mut lying = zeros.clone();
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&(50_000_000u32).to_le_bytes());
        let err = decode_payload(Bytes::from(lying), None, false, LIMIT, &mut small_cap.reservation()).unwrap_err();
        assert!(matches!(err, DecodeError::Gzip(_)), "the stream's own check refuses the lie: {err:?}");
        let out = decode_payload(Bytes::from(zeros), None, false, LIMIT, &mut small_cap.reservation()).unwrap();
        assert_eq!(out.len(), 40_000);
    }

    #[test]
    fn every_decoder_grows_only_into_reserved_memory() {
        let text = format!("[{}]", vec!["0"; 400_000].join(","));
        let lz = lz_str::compress_to_base64(&text);
        let cases: [(&str, Vec<u8>, Option<Encoding>); 4] = [
            ("gzip", gzip(text.as_bytes()), None),
            ("base64 of gzip", b64(&gzip(text.as_bytes())).into_bytes(), Some(Encoding::Base64)),
            ("base64", b64(text.as_bytes()).into_bytes(), Some(Encoding::Base64)),
            ("lz64", lz.into_bytes(), Some(Encoding::LzString)),
        ];
        for (name, payload, hint) in cases {
            let small = MemoryBudget::new(1 << 30, 256 * 1024);
            let err = decode_payload(Bytes::from(payload.clone()), hint, false, LIMIT, &mut small.reservation());
            assert_eq!(
                err.unwrap_err(),
                DecodeError::Memory(BudgetError::RequestTooLarge { limit: 256 * 1024 }),
                "{name}"
            );
            assert_eq!(small.available_bytes(), 1 << 30, "{name}: all given back");
            let shared = MemoryBudget::new(8 << 20, 1 << 30);
            let _other = {
                let mut r = shared.reservation();
                r.hold((8 << 20) - 64 * 1024).unwrap();
                r
            };
            let err = decode_payload(Bytes::from(payload.clone()), hint, false, LIMIT, &mut shared.reservation());
            assert_eq!(err.unwrap_err(), DecodeError::Memory(BudgetError::Exhausted), "{name}");
            let mut enough = plenty();
            let out = decode_payload(Bytes::from(payload), hint, false, LIMIT, &mut enough).unwrap();
            assert_eq!(out.len(), text.len(), "{name}");
            assert!(enough.held() >= text.len(), "{name}: {} held for {} bytes", enough.held(), text.len());
        }
    }

    #[test]
    fn base64_when_hinted_padded_or_not_and_with_spaces() {
        let encoded = b64(JSON.as_bytes());
        assert_eq!(dec(encoded.clone(), Some(Encoding::Base64), false).unwrap(), JSON);
        assert_eq!(dec(encoded.trim_end_matches('='), Some(Encoding::Base64), false).unwrap(), JSON);
        let with_plus = b64(b"[{\"event\":\">>>???\"}]");
        assert!(with_plus.contains('+') || with_plus.contains('/'), "{with_plus}");
        assert_eq!(
            dec(with_plus.replace('+', " "), Some(Encoding::Base64), false).unwrap(),
            "[{\"event\":\">>>???\"}]"
        );
        assert_eq!(dec(b64(&gzip(JSON.as_bytes())), Some(Encoding::Base64), false).unwrap(), JSON, "base64 of gzip");
    }

    #[test]
    fn base64_is_sniffed_only_on_legacy_routes() {
        let encoded = b64(JSON.as_bytes());
        assert_eq!(dec(encoded.clone(), None, true).unwrap(), JSON);
        assert_eq!(dec(encoded.clone(), None, false).unwrap(), encoded, "left as is; parsing will reject it");
    }

    #[test]
    fn invalid_base64_names_the_encoding() {
        let err = dec("not*base64!", Some(Encoding::Base64), false).unwrap_err();
        assert_eq!(err.code(), "invalid_base64");
    }

    #[test]
    fn lz64_decodes_and_rejects_garbage() {
        let encoded = lz_str::compress_to_base64(JSON);
        assert_eq!(dec(encoded, Some(Encoding::LzString), false).unwrap(), JSON);
        assert_eq!(dec("%%%%", Some(Encoding::LzString), false).unwrap_err(), DecodeError::LzString);
    }

    #[test]
    fn lz64_bomb_hits_the_cap() {
        let encoded = lz_str::compress_to_base64(&" ".repeat(LIMIT / 2));
        assert!(encoded.len() < LIMIT / 100, "a bomb: {} bytes in", encoded.len());
        let err = decode_payload(Bytes::from(encoded), Some(Encoding::LzString), false, LIMIT / 4, &mut plenty())
            .unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { limit: LIMIT / 4 });
    }

    #[test]
    fn uncompressed_over_the_limit_is_too_large() {
        let big = format!("[{{\"event\":\"{}\"}}]", "x".repeat(LIMIT));
        assert_eq!(dec(big, None, false).unwrap_err(), DecodeError::TooLarge { limit: LIMIT });
    }

    #[test]
    fn empty_payload() {
        assert_eq!(dec("", None, false).unwrap_err(), DecodeError::Empty);
        assert_eq!(dec("  \n", None, false).unwrap_err(), DecodeError::Empty);
    }

    mod requests {
        use super::*;
        use crate::request::{Endpoint, Query, RequestMeta};
        use std::net::{IpAddr, Ipv4Addr};

        fn meta(route: Endpoint, query: &str, form: bool, content_encoding: Option<&str>) -> RequestMeta {
            RequestMeta {
                route,
                query: Query::parse(Some(query)),
                is_form: form,
                content_encoding: content_encoding.map(str::to_string),
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                now: time::OffsetDateTime::now_utc(),
            }
        }
        fn run(m: &RequestMeta, body: impl Into<Vec<u8>>) -> String {
            String::from_utf8(decode(m, Bytes::from(body.into()), LIMIT, &mut plenty()).unwrap().json.to_vec()).unwrap()
        }

        #[test]
        fn query_data_wins_over_body() {
            let q = format!(
                "data={}&compression=base64",
                form_urlencoded::byte_serialize(b64(JSON.as_bytes()).as_bytes()).collect::<String>()
            );
            assert_eq!(run(&meta(Endpoint::Events, &q, false, None), "ignored"), JSON);
        }

        #[test]
        fn form_data_with_compression_field_and_space_fix() {
            // posthog-js: `data=<base64>&compression=base64` with `+` left unescaped.
            let body = format!("data={}&compression=base64", b64(JSON.as_bytes()).replace('+', " "));
            assert_eq!(run(&meta(Endpoint::Events, "", true, None), body.replace(' ', "+")), JSON);
            let raw = format!("data={}", form_urlencoded::byte_serialize(JSON.as_bytes()).collect::<String>());
            assert_eq!(run(&meta(Endpoint::Events, "", true, None), raw), JSON, "url-encoded JSON in a form");
            assert_eq!(run(&meta(Endpoint::Events, "", true, None), JSON), JSON, "a raw body mislabelled as a form");
        }

        #[test]
        fn hint_order_query_then_form_then_content_encoding() {
            let lz = lz_str::compress_to_base64(JSON);
            // Query says lz64, Content-Encoding says base64: query wins.
            assert_eq!(run(&meta(Endpoint::Events, "compression=lz64", false, Some("base64")), lz.clone()), JSON);
            // Unknown query hint is skipped, Content-Encoding is used.
            assert_eq!(
                run(&meta(Endpoint::Events, "compression=zzz", false, Some("base64")), b64(JSON.as_bytes())),
                JSON
            );
            let body =
                format!("data={}&compression=lz64", form_urlencoded::byte_serialize(lz.as_bytes()).collect::<String>());
            assert_eq!(run(&meta(Endpoint::Events, "", true, Some("base64")), body), JSON, "form field before header");
        }
    }
}
