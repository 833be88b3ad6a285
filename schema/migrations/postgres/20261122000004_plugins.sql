-- Plugins: the code (one row per installed version) and each team's configured
-- instances of it, in the team's order. Ingest reloads an instance when its
-- `updated_at` moves.
CREATE TABLE IF NOT EXISTS plugins (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT        NOT NULL,
    version    TEXT        NOT NULL,
    manifest   JSONB       NOT NULL,
    source     TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS plugin_configs (
    id            BIGSERIAL PRIMARY KEY,
    team_id       BIGINT      NOT NULL REFERENCES teams (id),
    plugin_id     BIGINT      NOT NULL REFERENCES plugins (id),
    "order"       INT         NOT NULL DEFAULT 0,
    enabled       BOOLEAN     NOT NULL DEFAULT TRUE,
    config        JSONB       NOT NULL DEFAULT '{}',
    -- healthy | degraded | disabled, and why (set by ingest; an operator's enable resets it).
    status        TEXT        NOT NULL DEFAULT 'healthy',
    status_reason TEXT        NOT NULL DEFAULT '',
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS plugin_configs_team ON plugin_configs (team_id, "order");

-- ctx.storage, namespaced by plugin config.
CREATE TABLE IF NOT EXISTS plugin_storage (
    plugin_config_id BIGINT NOT NULL REFERENCES plugin_configs (id) ON DELETE CASCADE,
    key              TEXT   NOT NULL,
    value            TEXT   NOT NULL,
    PRIMARY KEY (plugin_config_id, key)
);
