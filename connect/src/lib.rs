//! How Sluice's binaries reach what they depend on: Kafka (TLS and SASL, any other
//! librdkafka property passed through), Postgres and Redis (TLS through rustls), secrets
//! read from files, and credentials kept out of whatever is printed.
//!
//! Both binaries (and the plugin workers) connect through here, so a setting means the
//! same thing everywhere, and one that cannot be honoured stops the process at start-up
//! with a message naming it, instead of quietly turning a feature off.

pub mod files;
pub mod kafka;
pub mod postgres;
pub mod redact;
pub mod redis;

/// rustls wants one crypto provider per process; every rustls user in Sluice (sqlx,
/// redis, reqwest) is built on ring, so ring it is. Call before any TLS connection.
pub fn install_tls_provider() {
    // Err only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
