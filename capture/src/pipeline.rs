//! One request through the stages: decode → parse → normalize → route → produce.
//!
//! Each stage is a pure function in its own module; this file only wires them and
//! keeps the books (what was received, dropped and why, what went where).

use std::sync::Arc;

use bytes::Bytes;
use sluice_schema::CapturedEvent;
use time::format_description::well_known::Rfc3339;

use crate::decode;
use crate::error::CaptureError;
use crate::normalize::{self, Invalid, NormalizedEvent};
use crate::overflow::GlobalLimiter;
use crate::parse;
use crate::produce::{OutMessage, Sink};
use crate::replay;
use crate::request::{RequestMeta, Route as HttpRoute};
use crate::route::{Lane, Route, Router};
use crate::telemetry;
use crate::token::TokenError;

pub struct Pipeline {
    pub router: Router,
    pub global_limit: GlobalLimiter,
    pub sink: Arc<dyn Sink>,
    pub max_decompressed_bytes: usize,
    pub message_max_bytes: usize,
}

/// What a successful request tells the client beyond "Ok".
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub recordings_quota_limited: bool,
}

impl Pipeline {
    pub async fn handle(&self, meta: &RequestMeta, body: Bytes) -> Result<Outcome, CaptureError> {
        let decoded = decode::decode(meta, body, self.max_decompressed_bytes)?;
        telemetry::payload(meta.route, decoded.received_bytes, decoded.json.len());
        let parsed = parse::parse(&decoded.json)?;
        telemetry::events_received(meta.route, parsed.events.len());
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
                Ok(ev) if meta.route == HttpRoute::Replay || ev.is_snapshot() => snapshots.push(ev),
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

        let sent_at = normalize::sent_at(parsed.sent_at.as_ref(), meta.query.sent_at_ms);
        let envelope = Envelope {
            ip: meta.ip.to_string(),
            now_text: meta.now.format(&Rfc3339).expect("UTC times format as RFC 3339"),
            meta,
            sent_at,
            historical: parsed.historical_migration,
        };

        let mut messages = Vec::with_capacity(analytics.len() + snapshots.len());
        for ev in analytics {
            match self.router.route(&ev, envelope.historical) {
                Route::QuotaLimited => telemetry::events_dropped("quota_limited", 1),
                Route::Produce { lane, key, overflow } => {
                    if let Some(reason) = overflow {
                        telemetry::overflow_reroute(reason);
                    }
                    messages.push(envelope.message(lane, key, ev));
                }
            }
        }

        let mut outcome = Outcome::default();
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
                let lane = self.router.replay_lane(&g.session_id);
                let event = CapturedEvent {
                    uuid: g.uuid,
                    distinct_id: g.distinct_id,
                    ip: envelope.ip.clone(),
                    data: g.data,
                    now: meta.now,
                    sent_at,
                    token: g.token,
                    event: "$snapshot_items".into(),
                    timestamp: g.timestamp,
                    historical_migration: false,
                };
                messages.push(OutMessage::new(lane, Some(g.session_id), &event, &envelope.now_text));
            }
        }

        let mut per_lane: Vec<(Lane, usize)> = Vec::new();
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
            telemetry::events_ingested(lane, n);
        }
        Ok(outcome)
    }
}

/// Request-wide fields every message of the request carries.
struct Envelope<'a> {
    meta: &'a RequestMeta,
    ip: String,
    now_text: String,
    sent_at: Option<time::OffsetDateTime>,
    historical: bool,
}

impl Envelope<'_> {
    fn message(&self, lane: Lane, key: Option<String>, ev: NormalizedEvent) -> OutMessage {
        let event = CapturedEvent {
            uuid: ev.uuid,
            data: serde_json::to_string(&ev.data).expect("a JSON map always serializes"),
            distinct_id: ev.distinct_id,
            ip: self.ip.clone(),
            now: self.meta.now,
            sent_at: self.sent_at,
            token: ev.token,
            event: ev.event,
            timestamp: ev.timestamp,
            historical_migration: self.historical,
        };
        OutMessage::new(lane, key, &event, &self.now_text)
    }
}
