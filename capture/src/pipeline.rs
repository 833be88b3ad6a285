//! One request through the stages: decode → parse → normalize → route → produce.
//!
//! Each stage is a pure function in its own module; this file only wires them and
//! keeps the books (what was received, dropped and why, what went where).

use std::sync::Arc;

use bytes::Bytes;
use sluice_schema::CapturedEvent;
use time::format_description::well_known::Rfc3339;

use crate::budget::Reservation;
use crate::decode;
use crate::error::CaptureError;
use crate::normalize::{self, Invalid, NormalizedEvent};
use crate::overflow::GlobalLimiter;
use crate::parse;
use crate::produce::{OutMessage, Sink};
use crate::replay::{self, ReplayMessage};
use crate::request::{Endpoint, RequestMeta};
use crate::route::{Decision, Router, Topic};
use crate::telemetry;
use crate::token::TokenError;

pub(crate) struct Pipeline {
    pub router: Router,
    pub global_limit: GlobalLimiter,
    pub sink: Arc<dyn Sink>,
    pub max_decompressed_bytes: usize,
    pub message_max_bytes: usize,
}

/// What a successful request tells the client beyond "Ok".
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub recordings_quota_limited: bool,
}

impl Pipeline {
    /// `memory` holds the body already; decoding and parsing add to it, and it is given
    /// back when the request is done.
    pub(crate) async fn handle(
        &self,
        meta: &RequestMeta,
        body: Bytes,
        mut memory: Reservation,
    ) -> Result<Accepted, CaptureError> {
        let decoded = decode::decode(meta, body, self.max_decompressed_bytes, &mut memory)?;
        telemetry::payload(meta.route.as_str(), decoded.received_bytes, decoded.json.len());
        let parsed = parse::parse(&decoded.json, &mut memory)?;
        telemetry::events_received(meta.route.as_str(), parsed.events.len());
        if !self.global_limit.allows(parsed.events.len()) {
            return Err(CaptureError::RateLimited);
        }

        let mut analytics = Vec::new();
        let mut snapshots = Vec::new();
        let mut first_invalid: Option<Invalid> = None;
        for value in parsed.events {
            let normalized = normalize::normalize(value, parsed.token.as_ref(), meta.route).and_then(|ev| {
                if self.router.token_allowed(&ev.token) {
                    Ok(ev)
                } else {
                    Err(Invalid::Token(TokenError::Unknown))
                }
            });
            match normalized {
                Ok(ev) if meta.route == Endpoint::Replay || ev.is_snapshot() => snapshots.push(ev),
                Ok(ev) => analytics.push(ev),
                Err(invalid) => {
                    telemetry::events_dropped(invalid.cause(), 1);
                    // A token problem explains a rejection better than any other.
                    if first_invalid.as_ref().is_none_or(|f| !matches!(f, Invalid::Token(_))) {
                        first_invalid = Some(invalid);
                    }
                }
            }
        }
        if analytics.is_empty() && snapshots.is_empty() {
            return Err(match first_invalid {
                Some(Invalid::Token(e)) => CaptureError::Token(e),
                Some(other) => CaptureError::NoValidEvent(other.to_string()),
                None => CaptureError::NoValidEvent("the request holds no events".into()),
            });
        }

        let envelope = Envelope {
            ip: meta.ip.to_string(),
            now: meta.now,
            now_text: meta.now.format(&Rfc3339).expect("UTC times format as RFC 3339"),
            sent_at: normalize::sent_at(parsed.sent_at.as_ref(), meta.query.sent_at_ms),
            historical: parsed.historical_migration,
        };

        let mut messages = Vec::with_capacity(analytics.len() + snapshots.len());
        for ev in analytics {
            match self.router.route(&ev, envelope.historical) {
                Decision::QuotaLimited => telemetry::events_dropped("quota_limited", 1),
                Decision::Produce { lane, key, overflow } => {
                    if let Some(reason) = overflow {
                        telemetry::overflow_reroute(reason.as_str());
                    }
                    messages.push(envelope.message(lane, key, ev));
                }
            }
        }

        let mut outcome = Accepted::default();
        if !snapshots.is_empty() {
            let before = snapshots.len();
            snapshots.retain(|ev| !self.router.recordings_limited(&ev.token));
            if snapshots.len() < before {
                outcome.recordings_quota_limited = true;
                telemetry::events_dropped("quota_limited_recordings", before - snapshots.len());
            }
            let (groups, invalid) = replay::group(snapshots, self.message_max_bytes);
            for i in &invalid {
                telemetry::events_dropped(i.cause(), 1);
            }
            if groups.is_empty() && messages.is_empty() && !outcome.recordings_quota_limited {
                let reason = invalid.first().map_or_else(|| "no snapshot data".to_string(), ToString::to_string);
                return Err(CaptureError::NoValidEvent(reason));
            }
            for g in groups {
                let lane = self.router.replay_topic(&g.session_id);
                messages.push(envelope.replay_message(lane, g));
            }
        }

        let mut per_lane: Vec<(Topic, usize)> = Vec::new();
        for m in &messages {
            match per_lane.iter_mut().find(|(l, _)| *l == m.lane) {
                Some((_, n)) => *n += 1,
                None => per_lane.push((m.lane, 1)),
            }
        }
        if !messages.is_empty() {
            self.sink.send_all(messages).await?;
        }
        for (lane, n) in per_lane {
            telemetry::events_ingested(lane.as_str(), n);
        }
        Ok(outcome)
    }
}

/// Request-wide fields every message of the request carries.
struct Envelope {
    ip: String,
    now: time::OffsetDateTime,
    now_text: String,
    sent_at: Option<time::OffsetDateTime>,
    historical: bool,
}

impl Envelope {
    fn message(&self, lane: Topic, key: Option<String>, ev: NormalizedEvent) -> OutMessage {
        let event = CapturedEvent {
            uuid: ev.uuid,
            data: serde_json::to_string(&ev.data).expect("a JSON map always serializes"),
            distinct_id: ev.distinct_id,
            ip: self.ip.clone(),
            now: self.now,
            sent_at: self.sent_at,
            token: ev.token,
            event: ev.event,
            timestamp: ev.timestamp,
            historical_migration: self.historical,
        };
        OutMessage::new(lane, key, &event, &self.now_text)
    }

    /// Replay is keyed by session, so one session's chunks stay in order.
    fn replay_message(&self, lane: Topic, group: ReplayMessage) -> OutMessage {
        let event = CapturedEvent {
            uuid: group.uuid,
            distinct_id: group.distinct_id,
            ip: self.ip.clone(),
            data: group.data,
            now: self.now,
            sent_at: self.sent_at,
            token: group.token,
            event: "$snapshot_items".into(),
            timestamp: group.timestamp,
            historical_migration: false,
        };
        OutMessage::new(lane, Some(group.session_id), &event, &self.now_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{LimitList, RedisLists};
    use crate::overflow::{OverflowLimiter, OverflowSettings};
    use crate::produce::{MemorySink, ProduceError};
    use crate::request::Query;
    use crate::team_tokens::TeamTokens;
    use serde_json::json;
    use sluice_schema::topics::Lane;
    use std::time::Duration;

    fn pipeline(message_max_bytes: usize) -> (Pipeline, Arc<MemorySink>) {
        let sink = Arc::new(MemorySink { message_max_bytes, ..Default::default() });
        let lists = RedisLists::new(Duration::from_secs(60));
        let overflow = OverflowLimiter::new(
            OverflowSettings { enabled: true, per_second: 100, burst: 100, forced: Default::default(), max_keys: 100 },
            LimitList::new(Duration::from_secs(60)),
        );
        let p = Pipeline {
            router: Router { lists, overflow, preserve_locality: false, team_tokens: TeamTokens::disabled() },
            global_limit: GlobalLimiter::new(0, 0),
            sink: sink.clone(),
            max_decompressed_bytes: 10 << 20,
            message_max_bytes,
        };
        (p, sink)
    }

    fn meta(route: Endpoint) -> RequestMeta {
        RequestMeta {
            route,
            query: Query::default(),
            is_form: false,
            content_encoding: None,
            ip: "198.51.100.7".parse().unwrap(),
            now: time::OffsetDateTime::now_utc(),
        }
    }

    async fn handle(p: &Pipeline, body: serde_json::Value) -> Result<Accepted, CaptureError> {
        let memory = crate::budget::MemoryBudget::new(1 << 30, 1 << 30).reservation();
        p.handle(&meta(Endpoint::Batch), Bytes::from(body.to_string()), memory).await
    }

    #[tokio::test]
    async fn analytics_and_replay_of_one_request_go_to_their_lanes() {
        let (p, sink) = pipeline(1_000_000);
        let body = json!({"api_key": "phc_t", "sent_at": "2024-05-01T10:00:00Z", "batch": [
            {"event": "a", "distinct_id": "d"},
            {"event": "$snapshot", "distinct_id": "d", "properties": {"$session_id": "s1", "$snapshot_data": [1]}},
            {"event": "b", "distinct_id": "d"},
        ]});
        assert_eq!(handle(&p, body).await.unwrap(), Accepted::default());
        let sent = sink.messages.lock().unwrap();
        let lanes: Vec<Topic> = sent.iter().map(|m| m.lane).collect();
        assert_eq!(lanes, vec![Topic::Events(Lane::Main), Topic::Events(Lane::Main), Topic::Replay]);
        assert_eq!(sent[2].key.as_deref(), Some("s1"));
        let first: CapturedEvent = serde_json::from_slice(&sent[0].payload).unwrap();
        assert_eq!(first.ip, "198.51.100.7");
        assert_eq!(first.sent_at.map(|t| t.unix_timestamp()), Some(1_714_557_600));
    }

    #[tokio::test]
    async fn nothing_is_produced_when_one_message_is_too_large() {
        let (p, sink) = pipeline(2_000);
        let body = json!({"api_key": "phc_t", "batch": [
            {"event": "small", "distinct_id": "d"},
            {"event": "big", "distinct_id": "d", "properties": {"pad": "x".repeat(5_000)}},
        ]});
        let err = handle(&p, body).await.unwrap_err();
        assert!(matches!(err, CaptureError::Produce(ProduceError::TooLarge { .. })), "{err:?}");
        assert!(sink.messages.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn quota_limited_tokens_are_accepted_and_not_produced() {
        let (p, sink) = pipeline(1_000_000);
        p.router.lists.quota_events.replace(["phc_over".to_string()].into());
        let body = json!({"api_key": "phc_over", "batch": [{"event": "a", "distinct_id": "d"}]});
        assert_eq!(handle(&p, body).await.unwrap(), Accepted::default());
        assert!(sink.messages.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failing_sink_fails_the_request() {
        let (p, sink) = pipeline(1_000_000);
        *sink.fail_with.lock().unwrap() = Some(ProduceError::QueueFull);
        let err =
            handle(&p, json!({"api_key": "phc_t", "batch": [{"event": "a", "distinct_id": "d"}]})).await.unwrap_err();
        assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }
}
