//! The event lanes' side of exports: a batch's written events of teams with export
//! plugins go to the exports topic after the batch's rows are written and before its
//! offsets are committed. A crash between the two publishes them again (at least once);
//! a broker that refuses them fails the batch, which is retried like any other write.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The headers of a message on the exports topic.
pub(crate) mod headers {
    /// The event's team, so the exports lane need not parse an event to know whose
    /// plugins it goes to.
    pub(crate) const TEAM: &str = "team_id";
    /// Set by `dlq replay --exports`: only this plugin config gets the event…
    pub(crate) const ONLY_PLUGIN: &str = "sluice_export_plugin_config";
    /// …and only through this hook.
    pub(crate) const ONLY_HOOK: &str = "sluice_export_hook";
}

/// A written event on its way to the exports topic.
pub(crate) struct Written {
    pub team: i64,
    /// `team:distinct_id`: one person's events stay in order on one partition.
    pub key: String,
    /// The event as plugins see it (`plugins::on_event_payload`), as JSON.
    pub payload: Vec<u8>,
}

pub(crate) struct ExportsTopic {
    producer: FutureProducer,
    topic: String,
}

impl ExportsTopic {
    pub(crate) fn new(producer: FutureProducer, topic: String) -> ExportsTopic {
        ExportsTopic { producer, topic }
    }

    /// Publishes every event and waits until the broker has acknowledged all of them.
    pub(crate) async fn publish(&self, events: &[Written]) -> Result<(), KafkaError> {
        let sends = events.iter().map(|w| {
            let team = w.team.to_string();
            let headers = OwnedHeaders::new().insert(Header { key: headers::TEAM, value: Some(team.as_bytes()) });
            let record = FutureRecord::to(&self.topic).key(&w.key).payload(&w.payload).headers(headers);
            async move { self.producer.send(record, Duration::from_secs(30)).await.map(drop).map_err(|(e, _)| e) }
        });
        futures::future::try_join_all(sends).await.map(drop)
    }
}
