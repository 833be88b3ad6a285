-- What capture tells the browser SDK when it loads (/array/<token>/config, /flags,
-- /decide): posthog-js turns these features on only when the answer says so.
ALTER TABLE teams
    -- Session recording, its sample rate (NULL: every session) and the shortest session
    -- kept (NULL: all).
    ADD COLUMN IF NOT EXISTS session_recording_opt_in             BOOLEAN          NOT NULL DEFAULT FALSE,
    ADD COLUMN IF NOT EXISTS session_recording_sample_rate        DOUBLE PRECISION
        CHECK (session_recording_sample_rate BETWEEN 0 AND 1),
    ADD COLUMN IF NOT EXISTS session_recording_minimum_duration_ms INTEGER
        CHECK (session_recording_minimum_duration_ms >= 0),
    -- Console logs in recordings.
    ADD COLUMN IF NOT EXISTS capture_console_log_opt_in           BOOLEAN          NOT NULL DEFAULT FALSE,
    -- Autocapture (clicks, changes, submits) off for the team.
    ADD COLUMN IF NOT EXISTS autocapture_opt_out                  BOOLEAN          NOT NULL DEFAULT FALSE,
    ADD COLUMN IF NOT EXISTS heatmaps_opt_in                      BOOLEAN          NOT NULL DEFAULT FALSE,
    ADD COLUMN IF NOT EXISTS autocapture_exceptions_opt_in        BOOLEAN          NOT NULL DEFAULT FALSE,
    -- Autocapture elements sent as the chain string (FALSE: as the older `$elements`
    -- list, which ingest converts).
    ADD COLUMN IF NOT EXISTS elements_chain_as_string             BOOLEAN          NOT NULL DEFAULT TRUE;
