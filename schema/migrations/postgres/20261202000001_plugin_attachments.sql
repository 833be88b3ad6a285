-- Files uploaded with a plugin configuration (a mapping table, a credentials file),
-- read by the plugin as ctx.attachments.<key>. Attaching one moves the configuration's
-- updated_at, so ingest reloads the instance with it.
CREATE TABLE IF NOT EXISTS plugin_attachments (
    plugin_config_id BIGINT      NOT NULL REFERENCES plugin_configs (id) ON DELETE CASCADE,
    key              TEXT        NOT NULL,
    content_type     TEXT        NOT NULL,
    file_name        TEXT        NOT NULL,
    contents         BYTEA       NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (plugin_config_id, key)
);
