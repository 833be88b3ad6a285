//! Plugin configurations reloaded when an operator command changes them: at once on a
//! Redis notice, and every interval anyway.

use std::time::Duration;

use tracing::{debug, warn};

use super::Plugins;

/// Re-reads plugin configurations when a reload notice arrives on Redis, and every
/// `interval` anyway (a notice lost while Redis was away is caught up with).
pub(crate) fn spawn_reloader(
    plugins: std::sync::Arc<Plugins>,
    interval: Duration,
    redis: Option<redis::Client>,
    channel: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let notice = std::sync::Arc::new(tokio::sync::Notify::new());
    let listener = redis.map(|client| {
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
        })
    });
    tokio::spawn(async move {
        let mut every = sluice_common::every::Every::after(interval, stop);
        loop {
            tokio::select! {
                going = every.tick() => if !going { break },
                _ = notice.notified() => {}
            }
            if let Err(e) = plugins.refresh().await {
                warn!(error = %e, "reading plugin configurations failed; keeping the loaded ones");
            }
        }
        // The subscription only waits for notices; nothing of it is left to finish.
        if let Some(listener) = listener {
            listener.abort();
        }
    })
}
