-- Teams: who an event belongs to. Capture and ingest resolve a team from its api_token.
CREATE TABLE IF NOT EXISTS teams (
    id                        BIGSERIAL PRIMARY KEY,
    name                      TEXT        NOT NULL,
    api_token                 TEXT        NOT NULL UNIQUE,
    -- Remove $ip from events (after plugins, which may need it for geoip).
    anonymize_ips             BOOLEAN     NOT NULL DEFAULT FALSE,
    -- Treat every event as personless.
    person_processing_opt_out BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at                TIMESTAMPTZ NOT NULL DEFAULT now()
);
