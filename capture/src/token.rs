//! Which token an event belongs to, and whether it can be one.
//!
//! Capture does no database lookup on the request path, so this checks the token's
//! shape only; ingest decides whether a team has it.

use serde_json::{Map, Value};

const MAX_TOKEN_BYTES: usize = 64;
const PERSONAL_KEY_PREFIX: &str = "phx_";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TokenError {
    #[error("no api token: send it as `api_key` or `token`, on the batch or the event, or as `properties.token`")]
    Missing,
    #[error("api token must be a string")]
    NotString,
    #[error("api token is empty")]
    Empty,
    #[error("api token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("api token must be ASCII without NUL characters")]
    NotAscii,
    #[error("api token is a personal API key (phx_...); use the project API key")]
    PersonalKey,
    #[error("no team has this api token")]
    Unknown,
}

impl TokenError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::NotString => "token_not_string",
            TokenError::Empty => "empty_token",
            TokenError::TooLong => "token_too_long",
            TokenError::NotAscii => "token_not_ascii",
            TokenError::PersonalKey => "personal_api_key",
            TokenError::Unknown => "unknown_token",
        }
    }
}

pub(crate) fn validate(token: &str) -> Result<&str, TokenError> {
    if token.is_empty() {
        Err(TokenError::Empty)
    } else if token.len() > MAX_TOKEN_BYTES {
        Err(TokenError::TooLong)
    } else if !token.is_ascii() || token.contains('\0') {
        Err(TokenError::NotAscii)
    } else if token.starts_with(PERSONAL_KEY_PREFIX) {
        Err(TokenError::PersonalKey)
    } else {
        Ok(token)
    }
}

/// The first token found, in order: the batch's, the event's `token`/`$token`/`api_key`,
/// then `properties.token`. The first one present decides; a bad one is not skipped,
/// because falling through to another would file the event under a token the client
/// did not mean.
pub(crate) fn find<'a>(batch: Option<&'a Value>, event: &'a Map<String, Value>) -> Result<&'a str, TokenError> {
    let found = batch
        .or_else(|| ["token", "$token", "api_key"].iter().find_map(|k| event.get(*k).filter(|v| !v.is_null())))
        .or_else(|| event.get("properties").and_then(|p| p.get("token")).filter(|v| !v.is_null()));
    match found {
        None => Err(TokenError::Missing),
        Some(Value::String(s)) => validate(s),
        Some(_) => Err(TokenError::NotString),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn shape_rules() {
        assert_eq!(validate("phc_abc123"), Ok("phc_abc123"));
        assert_eq!(validate(&"a".repeat(64)), Ok(&*"a".repeat(64)));
        assert_eq!(validate(&"a".repeat(65)), Err(TokenError::TooLong));
        assert_eq!(validate(""), Err(TokenError::Empty));
        assert_eq!(validate("phc_é"), Err(TokenError::NotAscii));
        assert_eq!(validate("phc\0x"), Err(TokenError::NotAscii));
        assert_eq!(validate("phx_secret"), Err(TokenError::PersonalKey));
    }

    #[test]
    fn lookup_order() {
        let ev = obj(json!({"token":"ev","api_key":"ak","properties":{"token":"prop"}}));
        assert_eq!(find(Some(&json!("batch")), &ev), Ok("batch"));
        assert_eq!(find(None, &ev), Ok("ev"));
        assert_eq!(find(None, &obj(json!({"$token":"dollar","api_key":"ak"}))), Ok("dollar"));
        assert_eq!(find(None, &obj(json!({"api_key":"ak"}))), Ok("ak"));
        assert_eq!(find(None, &obj(json!({"token":null,"properties":{"token":"prop"}}))), Ok("prop"));
        assert_eq!(find(None, &obj(json!({"properties":{}}))), Err(TokenError::Missing));
        assert_eq!(find(None, &obj(json!({"token":12}))), Err(TokenError::NotString));
        assert_eq!(find(Some(&json!("phx_1")), &ev), Err(TokenError::PersonalKey), "a bad batch token is not skipped");
    }
}
