-- Plugins' jobs (ctx.jobs.<name>(payload):run_now() / :run_in(s) / :run_at(ms)): kept
-- until they ran, claimed by one ingest process at a time (FOR UPDATE SKIP LOCKED, with
-- a lease a crashed process's claim expires from), retried with back-off, and kept as
-- failed with their error after their last attempt.
CREATE TABLE IF NOT EXISTS plugin_jobs (
    id               BIGSERIAL   PRIMARY KEY,
    plugin_config_id BIGINT      NOT NULL REFERENCES plugin_configs (id) ON DELETE CASCADE,
    name             TEXT        NOT NULL,
    payload          TEXT        NOT NULL,
    run_at           TIMESTAMPTZ NOT NULL,
    attempts         INT         NOT NULL DEFAULT 0,
    -- pending | failed
    status           TEXT        NOT NULL DEFAULT 'pending',
    last_error       TEXT        NOT NULL DEFAULT '',
    locked_until     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS plugin_jobs_due ON plugin_jobs (run_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS plugin_jobs_config ON plugin_jobs (plugin_config_id, status);
