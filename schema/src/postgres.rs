//! Postgres schema: migrations embedded in the binaries, applied by `sluice-ingest migrate`.

/// Every migration in `schema/migrations/postgres`, in order.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
