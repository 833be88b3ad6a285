//! Plugin configurations reloaded when an operator command changes them: at once on a
//! Redis notice, and every interval anyway.

use std::time::Duration;

use tracing::{debug, warn};

use super::Plugins;

/// The Redis channel operator commands publish a plugin config id on after a change.
pub(crate) fn reload_channel(key_prefix: &str) -> String {
    format!("{key_prefix}plugin-reload")
}

/// Re-reads plugin configurations when a reload notice arrives on Redis, and every
/// `interval` anyway (a notice lost while Redis was away is caught up with).
pub(crate) fn spawn_reloader(
    plugins: std::sync::Arc<Plugins>,
    interval: Duration,
    redis: Option<redis::Client>,
    channel: String,
) {
    let notice = std::sync::Arc::new(tokio::sync::Notify::new());
    if let Some(client) = redis {
        let notice = notice.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                match subscribed.await {
                    Ok(pubsub) => {
                        let mut messages = pubsub.into_on_message();
                        while messages.next().await.is_some() {
                            notice.notify_one();
                        }
                    }
                    Err(e) => debug!(error = %e, "no reload notices from redis; polling only"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = notice.notified() => {}
            }
            if let Err(e) = plugins.refresh().await {
                warn!(error = %e, "reading plugin configurations failed; keeping the loaded ones");
            }
        }
    });
}
