//! `POST /i/v1/analytics/events`: the batch that posthog-python sends with
//! `capture_mode="v1"` (posthog-go and posthog-rs have it too).
//!
//! It differs from `/batch` in how it says things, not in what: the token is a Bearer
//! credential, the SDK's name and version come in the `PostHog-Sdk-Info` header, the
//! session and window ids and a few flags are typed fields of each event (`session_id`,
//! `window_id`, `options`), and the answer is per event (`results`, keyed by uuid, each
//! `ok` or `drop` with the reason). Capture translates the request into the `/batch`
//! shape, putting those fields back into properties under the names ingest reads, so
//! every rule after decoding is the pipeline's own.

use http::HeaderMap;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use sluice_schema::json::{measure, TooDeep};

use crate::budget::Reservation;
use crate::parse::{replace_lone_surrogates, ParseError};

/// A v1 request turned into a `/batch` body, and the events it turned away.
#[derive(Debug)]
pub(crate) struct Translated {
    /// `{"api_key", "sent_at", "historical_migration", "batch": [...]}`.
    pub batch: Value,
    /// The uuids of the events in `batch`, in order.
    pub accepted: Vec<String>,
    /// `(uuid, reason)` of each event not taken.
    pub dropped: Vec<(String, &'static str)>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum V1Error {
    #[error("no project API key: send it as `Authorization: Bearer <token>`")]
    MissingToken,
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("the body must be {{\"created_at\": <RFC 3339 time>, \"batch\": [events]}}")]
    Shape,
}

/// Reads the Bearer token, parses the body (its tree's memory reserved first) and
/// translates each event.
pub(crate) fn translate(json: &[u8], headers: &HeaderMap, memory: &mut Reservation) -> Result<Translated, V1Error> {
    let token = bearer(headers).ok_or(V1Error::MissingToken)?;
    let text = std::str::from_utf8(json).map_err(|_| ParseError::NotUtf8)?;
    memory.hold(measure(json).map_err(|TooDeep| ParseError::TooDeep)?.tree_bytes).map_err(ParseError::from)?;
    let body: Value =
        serde_json::from_str(&replace_lone_surrogates(text)).map_err(|e| ParseError::Json(e.to_string()))?;
    let Value::Object(mut body) = body else { return Err(V1Error::Shape) };
    let (Some(Value::String(created_at)), Some(Value::Array(events))) =
        (body.remove("created_at"), body.remove("batch"))
    else {
        return Err(V1Error::Shape);
    };
    // Skew correction measures the client's clock at sending: this attempt's time when
    // the SDK says it, else when the batch was made.
    let sent_at = header(headers, "posthog-request-timestamp")
        .filter(|t| OffsetDateTime::parse(t, &Rfc3339).is_ok())
        .unwrap_or(created_at);
    let lib = header(headers, "posthog-sdk-info").and_then(|info| {
        let (name, version) = info.split_once('/')?;
        Some((name.trim().to_string(), version.trim().to_string())).filter(|(n, v)| !n.is_empty() && !v.is_empty())
    });
    let mut translated = Translated { batch: Value::Null, accepted: Vec::new(), dropped: Vec::new() };
    let mut batch = Vec::with_capacity(events.len());
    for event in events {
        let uuid = event.get("uuid").and_then(Value::as_str).map(|u| u.trim().to_string()).unwrap_or_default();
        match translate_event(event, lib.as_ref()) {
            Ok(event) => {
                translated.accepted.push(uuid);
                batch.push(event);
            }
            Err(reason) => translated.dropped.push((uuid, reason)),
        }
    }
    translated.batch = json!({
        "api_key": token,
        "sent_at": sent_at,
        "historical_migration": body.get("historical_migration").and_then(Value::as_bool).unwrap_or(false),
        "batch": batch,
    });
    Ok(translated)
}

/// One v1 event as a `/batch` event, or why it is dropped.
fn translate_event(event: Value, lib: Option<&(String, String)>) -> Result<Value, &'static str> {
    let Value::Object(mut event) = event else { return Err("invalid_event") };
    let name = match event.remove("event") {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => return Err("missing_event_name"),
    };
    let uuid = match event.remove("uuid") {
        Some(Value::String(uuid)) if uuid::Uuid::parse_str(uuid.trim()).is_ok() => uuid.trim().to_string(),
        _ => return Err("invalid_uuid"),
    };
    let distinct_id = match event.remove("distinct_id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.trim().to_string(),
        _ => return Err("missing_distinct_id"),
    };
    let timestamp = match event.remove("timestamp") {
        Some(Value::String(t)) if OffsetDateTime::parse(&t, &Rfc3339).is_ok() => t,
        _ => return Err("invalid_timestamp"),
    };
    let mut properties = match event.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(properties)) => properties,
        Some(_) => return Err("invalid_properties"),
    };
    for (field, property) in [("session_id", "$session_id"), ("window_id", "$window_id")] {
        if let Some(Value::String(id)) = event.remove(field) {
            properties.insert(property.into(), Value::String(id));
        }
    }
    for (property, value) in options(event.remove("options"))? {
        properties.insert(property.into(), value);
    }
    // The header is the SDK's identity in v1 and wins over the properties.
    if let Some((name, version)) = lib {
        properties.insert("$lib".into(), Value::String(name.clone()));
        properties.insert("$lib_version".into(), Value::String(version.clone()));
    }
    Ok(
        json!({"event": name, "uuid": uuid, "distinct_id": distinct_id, "timestamp": timestamp, "properties": properties}),
    )
}

/// A property name and its value.
type Injected = (&'static str, Value);

/// The typed `options`, as the properties ingest reads. A value of the wrong type drops
/// the event (an SDK bug worth seeing) rather than being guessed at.
fn options(options: Option<Value>) -> Result<Vec<Injected>, &'static str> {
    let options = match options {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(options)) => options,
        Some(_) => return Err("invalid_options"),
    };
    let mut injected = Vec::new();
    for (option, property) in [
        ("cookieless_mode", "$cookieless_mode"),
        ("disable_skew_correction", "$ignore_sent_at"),
        ("process_person_profile", "$process_person_profile"),
    ] {
        match options.get(option) {
            None | Some(Value::Null) => {}
            Some(value) => injected.push((property, Value::Bool(as_bool(value).ok_or("invalid_options")?))),
        }
    }
    match options.get("product_tour_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) => injected.push(("$product_tour_id", Value::String(id.clone()))),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            injected.push(("$product_tour_id", Value::String(n.to_string())))
        }
        Some(_) => return Err("invalid_options"),
    }
    Ok(injected)
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        _ => None,
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = header(headers, "authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string()).filter(|t| !t.is_empty())
}

/// The answer: every event taken is `ok`, every one turned away `drop` with its reason.
pub(crate) fn results(translated: &Translated) -> Value {
    let mut results = Map::new();
    for uuid in &translated.accepted {
        results.insert(uuid.clone(), json!({"result": "ok"}));
    }
    for (uuid, reason) in &translated.dropped {
        results.insert(uuid.clone(), json!({"result": "drop", "details": reason}));
    }
    json!({"results": results})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn run(body: Value, pairs: &[(&'static str, &str)]) -> Result<Translated, V1Error> {
        let budget = MemoryBudget::new(1 << 30, 1 << 28);
        let mut memory = budget.reservation();
        translate(body.to_string().as_bytes(), &headers(pairs), &mut memory)
    }

    const UUID: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn a_posthog_python_v1_batch_becomes_the_batch_shape_with_its_fields_as_properties() {
        let body = json!({
            "created_at": "2026-11-30T10:00:00+00:00",
            "batch": [{
                "event": "purchase", "uuid": UUID, "distinct_id": " user-1 ", "timestamp": "2026-11-30T09:59:59.5+00:00",
                "session_id": "s-1", "window_id": "w-1",
                "options": {"process_person_profile": false, "disable_skew_correction": "true"},
                "properties": {"amount": 3, "$lib": "spoofed", "$set": {"plan": "pro"}},
            }],
        });
        let t = run(
            body,
            &[
                ("authorization", "Bearer phc_v1token"),
                ("posthog-sdk-info", "posthog-python/7.91.1"),
                ("posthog-request-timestamp", "2026-11-30T10:00:01+00:00"),
            ],
        )
        .unwrap();
        assert!(t.dropped.is_empty());
        assert_eq!(t.accepted, vec![UUID.to_string()]);
        assert_eq!(t.batch["api_key"], "phc_v1token");
        assert_eq!(t.batch["sent_at"], "2026-11-30T10:00:01+00:00");
        let event = &t.batch["batch"][0];
        assert_eq!(event["distinct_id"], "user-1");
        assert_eq!(event["timestamp"], "2026-11-30T09:59:59.5+00:00");
        let p = &event["properties"];
        assert_eq!(p["$session_id"], "s-1");
        assert_eq!(p["$window_id"], "w-1");
        assert_eq!(p["$process_person_profile"], false);
        assert_eq!(p["$ignore_sent_at"], true);
        assert_eq!(p["$lib"], "posthog-python");
        assert_eq!(p["$lib_version"], "7.91.1");
        assert_eq!(p["$set"]["plan"], "pro");
        assert_eq!(results(&t)["results"][UUID]["result"], "ok");
    }

    #[test]
    fn bad_events_are_dropped_with_their_reason_and_the_rest_taken() {
        let good = json!({"event": "e", "uuid": UUID, "distinct_id": "d", "timestamp": "2026-11-30T10:00:00Z"});
        let mut no_id = good.clone();
        no_id["distinct_id"] = json!("  ");
        no_id["uuid"] = json!("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c");
        let mut bad_time = good.clone();
        bad_time["timestamp"] = json!("yesterday");
        bad_time["uuid"] = json!("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d");
        let mut bad_option = good.clone();
        bad_option["options"] = json!({"cookieless_mode": "maybe"});
        bad_option["uuid"] = json!("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5e");
        let body = json!({"created_at": "2026-11-30T10:00:00Z", "batch": [good, no_id, bad_time, bad_option]});
        let t = run(body, &[("authorization", "Bearer phc_x")]).unwrap();
        assert_eq!(t.accepted.len(), 1);
        let reasons: Vec<&str> = t.dropped.iter().map(|(_, r)| *r).collect();
        assert_eq!(reasons, vec!["missing_distinct_id", "invalid_timestamp", "invalid_options"]);
        let answer = results(&t);
        assert_eq!(answer["results"]["0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5d"]["details"], "invalid_timestamp");
    }

    #[test]
    fn a_request_without_a_bearer_token_or_the_envelope_is_refused() {
        let body = json!({"created_at": "2026-11-30T10:00:00Z", "batch": []});
        assert!(matches!(run(body.clone(), &[]), Err(V1Error::MissingToken)));
        assert!(matches!(run(body, &[("authorization", "Basic abc")]), Err(V1Error::MissingToken)));
        assert!(matches!(run(json!({"batch": []}), &[("authorization", "Bearer t")]), Err(V1Error::Shape)));
        assert!(matches!(run(json!([1]), &[("authorization", "Bearer t")]), Err(V1Error::Shape)));
    }
}
