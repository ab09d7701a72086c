-- campaigns: firmware rollouts (docs/firmware.md). campaign_devices holds
-- each selected device's state: pending, offered (its firmware_update
-- command is out), downloading (the device received it), succeeded,
-- failed (reason), skipped (the campaign was aborted before it was
-- offered). command_id is the command of the offer.

-- +goose Up
CREATE TABLE campaigns (
    id             TEXT    PRIMARY KEY,
    firmware_id    TEXT    NOT NULL REFERENCES firmware (id),
    state          TEXT    NOT NULL,
    per_minute     INTEGER NOT NULL,
    ramp_pct       INTEGER NOT NULL DEFAULT 100, -- the rate's factor per ramp step, in percent
    ramp_every     INTEGER NOT NULL DEFAULT 0,   -- succeeded devices per ramp step; 0: no ramp
    max_per_minute INTEGER NOT NULL DEFAULT 0,   -- the ramp's ceiling
    max_concurrent INTEGER NOT NULL,
    device_timeout BIGINT  NOT NULL,
    abort_percent  INTEGER NOT NULL,
    abort_min      INTEGER NOT NULL,
    reason         TEXT    NOT NULL DEFAULT '',
    created_at     BIGINT  NOT NULL,
    created_by     TEXT    NOT NULL,
    updated_at     BIGINT  NOT NULL
);
CREATE TABLE campaign_devices (
    campaign_id TEXT   NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    device_id   TEXT   NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    state       TEXT   NOT NULL,
    command_id  TEXT,
    reason      TEXT   NOT NULL DEFAULT '',
    offered_at  BIGINT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, device_id)
);
CREATE INDEX campaign_devices_state ON campaign_devices (campaign_id, state);

-- +goose Down
DROP TABLE campaign_devices;
DROP TABLE campaigns;
