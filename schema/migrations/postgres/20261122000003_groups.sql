-- Group types get an index (0..4) per team on first sight; events carry $group_<index>.
CREATE TABLE IF NOT EXISTS group_type_mappings (
    team_id          BIGINT   NOT NULL REFERENCES teams (id),
    group_type       TEXT     NOT NULL,
    group_type_index SMALLINT NOT NULL CHECK (group_type_index BETWEEN 0 AND 4),
    PRIMARY KEY (team_id, group_type),
    UNIQUE (team_id, group_type_index)
);

CREATE TABLE IF NOT EXISTS groups (
    team_id          BIGINT      NOT NULL REFERENCES teams (id),
    group_type_index SMALLINT    NOT NULL,
    group_key        TEXT        NOT NULL,
    group_properties JSONB       NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL,
    version          BIGINT      NOT NULL DEFAULT 0,
    PRIMARY KEY (team_id, group_type_index, group_key)
);
