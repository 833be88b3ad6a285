-- Persons and the distinct ids that point at them.
CREATE TABLE IF NOT EXISTS persons (
    id                        BIGSERIAL PRIMARY KEY,
    -- UUIDv5 of "{team_id}:{first distinct_id}": known before the row exists.
    uuid                      UUID        NOT NULL,
    team_id                   BIGINT      NOT NULL REFERENCES teams (id),
    properties                JSONB       NOT NULL DEFAULT '{}',
    properties_last_operation JSONB       NOT NULL DEFAULT '{}',
    is_identified             BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at                TIMESTAMPTZ NOT NULL,
    -- Incremented by every change; ClickHouse keeps the row with the highest.
    version                   BIGINT      NOT NULL DEFAULT 0,
    UNIQUE (team_id, uuid)
);

CREATE TABLE IF NOT EXISTS person_distinct_ids (
    id          BIGSERIAL PRIMARY KEY,
    team_id     BIGINT NOT NULL REFERENCES teams (id),
    distinct_id TEXT   NOT NULL,
    person_id   BIGINT NOT NULL REFERENCES persons (id) ON DELETE CASCADE,
    version     BIGINT NOT NULL DEFAULT 0,
    UNIQUE (team_id, distinct_id)
);
CREATE INDEX IF NOT EXISTS person_distinct_ids_person ON person_distinct_ids (person_id);
