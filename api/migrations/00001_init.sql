-- The control plane's schema, one text for SQLite and PostgreSQL.
--
-- Portable on purpose: TEXT and BIGINT only, times as BIGINT unix milliseconds
-- (UTC), JSON as TEXT, no sequences or autoincrement (every id is either
-- chosen by the caller or random, and change versions come from feed_state).
-- The one dialect difference, locking feed_state, is in api/db.go.

-- +goose Up
-- feed_state is one row: version is the last change version handed out;
-- every write transaction locks this row first, so transactions commit in
-- version order and a follower that has seen version V has seen every
-- change <= V. horizon: changes at or below it may have been pruned
-- (tombstones), so a follower behind it must resync.
CREATE TABLE feed_state (
    id      INTEGER PRIMARY KEY,
    version BIGINT  NOT NULL,
    horizon BIGINT  NOT NULL
);
INSERT INTO feed_state (id, version, horizon) VALUES (1, 0, 0);

CREATE TABLE fleets (
    id          TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL,
    description TEXT   NOT NULL DEFAULT '',
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE classes (
    id          TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL,
    description TEXT   NOT NULL DEFAULT '',
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE regions (
    id          TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL,
    description TEXT   NOT NULL DEFAULT '',
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- devices: the registry. token_hash and prev_token_hash are hex SHA-256 of
-- the device's tokens (the registry file's token_sha256); prev_token_hash
-- stays valid until prev_token_expires_at (a rotation's overlap window).
-- version is the feed version of the row's last change.
CREATE TABLE devices (
    id                    TEXT   PRIMARY KEY,
    name                  TEXT   NOT NULL DEFAULT '',
    fleet                 TEXT   REFERENCES fleets (id),
    class                 TEXT   REFERENCES classes (id),
    region                TEXT   REFERENCES regions (id),
    labels                TEXT   NOT NULL DEFAULT '{}',
    state                 TEXT   NOT NULL,
    state_changed_at      BIGINT NOT NULL,
    state_changed_by      TEXT   NOT NULL,
    state_reason          TEXT   NOT NULL DEFAULT '',
    token_hash            TEXT,
    token_issued_at       BIGINT,
    prev_token_hash       TEXT,
    prev_token_expires_at BIGINT,
    version               BIGINT NOT NULL,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);
CREATE UNIQUE INDEX devices_version ON devices (version);
CREATE INDEX devices_fleet_id ON devices (fleet, id);

-- device_presence: what frontends report (last seen, which frontend, from
-- where). Kept apart from devices: presence is not a registry change, does
-- not move the feed's version and is not audited.
CREATE TABLE device_presence (
    device_id    TEXT    PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    last_seen_at BIGINT  NOT NULL,
    frontend     TEXT    NOT NULL,
    remote_addr  TEXT    NOT NULL,
    connected    INTEGER NOT NULL
);

-- feed_tombstones: deleted objects, for followers; pruned after the
-- retention, which raises feed_state.horizon.
CREATE TABLE feed_tombstones (
    version BIGINT PRIMARY KEY,
    kind    TEXT   NOT NULL,
    id      TEXT   NOT NULL,
    at      BIGINT NOT NULL
);

-- operators: people and services. fleets is a JSON array of fleet ids, or
-- ["*"] for every fleet; role is admin, operator, viewer or follower.
CREATE TABLE operators (
    id          TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL,
    role        TEXT   NOT NULL,
    fleets      TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    disabled_at BIGINT
);

-- api_keys: an operator's keys. A key is "drv_<id>_<secret>": id is the
-- primary key (one lookup, no scan), secret_hash the hex SHA-256 of secret.
CREATE TABLE api_keys (
    id           TEXT   PRIMARY KEY,
    operator_id  TEXT   NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    name         TEXT   NOT NULL DEFAULT '',
    secret_hash  TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX api_keys_operator ON api_keys (operator_id);

-- live_tokens: live-client tokens (what livefeed accepts). fleets and
-- devices are JSON arrays, area a JSON bounding box or NULL.
CREATE TABLE live_tokens (
    id         TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    fleets     TEXT   NOT NULL,
    devices    TEXT   NOT NULL DEFAULT '[]',
    area       TEXT,
    token_hash TEXT   NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    created_by TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- audit: every change. id is the change's feed version, so entries sort in
-- commit order. fleet and fleet_before scope the entry (a device moved from
-- fleet A to B is visible to both); NULL: visible to all-fleet keys only.
CREATE TABLE audit (
    id           BIGINT PRIMARY KEY,
    at           BIGINT NOT NULL,
    actor        TEXT   NOT NULL,
    key_id       TEXT   NOT NULL,
    action       TEXT   NOT NULL,
    object_type  TEXT   NOT NULL,
    object_id    TEXT   NOT NULL,
    fleet        TEXT,
    fleet_before TEXT,
    before_json  TEXT,
    after_json   TEXT,
    request_id   TEXT   NOT NULL DEFAULT '',
    remote_addr  TEXT   NOT NULL DEFAULT ''
);
CREATE INDEX audit_object ON audit (object_type, object_id, id);
CREATE INDEX audit_at ON audit (at);

-- +goose Down
DROP TABLE audit;
DROP TABLE live_tokens;
DROP TABLE api_keys;
DROP TABLE operators;
DROP TABLE feed_tombstones;
DROP TABLE device_presence;
DROP TABLE devices;
DROP TABLE regions;
DROP TABLE classes;
DROP TABLE fleets;
DROP TABLE feed_state;
