-- The alert engine's configuration (rules, geofences, webhooks) and the
-- alarm list operators work with (issue 18). Numbered after the issue so
-- that migrations of other work do not collide with it.

-- +goose Up
-- alert_objects: rules, geofences and webhooks, one table: kind is
-- 'rule', 'geofence' or 'webhook', body the object as the engine reads it
-- (package alerts/eval: Rule, Fence, Webhook; a webhook's secret in it).
-- fleet NULL: every fleet (only all-fleet keys manage such objects).
CREATE TABLE alert_objects (
    kind       TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    fleet      TEXT   REFERENCES fleets (id),
    body       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX alert_objects_fleet ON alert_objects (kind, fleet, id);

-- alert_config_state: the version of the alert configuration as a whole:
-- every write of alert_objects moves it (a change version), so that the
-- engine's long poll knows when to fetch it again.
CREATE TABLE alert_config_state (
    id      INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO alert_config_state (id, version) VALUES (1, 0);

-- alerts: one row per alert (its id is the engine's: type, fence,
-- device, start), with its latest state as the engine reports it (data:
-- the alert's JSON) and what operators did: acknowledged, cleared by hand.
CREATE TABLE alerts (
    id          TEXT    PRIMARY KEY,
    device      TEXT    NOT NULL,
    fleet       TEXT,
    type        TEXT    NOT NULL,
    fence       TEXT,
    severity    TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    late        INTEGER NOT NULL,
    start_ms    BIGINT  NOT NULL,
    end_ms      BIGINT,
    last_event  TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    acked_at    BIGINT,
    acked_by    TEXT,
    cleared_at  BIGINT,
    cleared_by  TEXT,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
CREATE INDEX alerts_start ON alerts (start_ms, id);
CREATE INDEX alerts_fleet_start ON alerts (fleet, start_ms);
CREATE INDEX alerts_device_start ON alerts (device, start_ms);

-- +goose Down
DROP TABLE alerts;
DROP TABLE alert_config_state;
DROP TABLE alert_objects;
