-- commands: what operators ask devices to do (docs/commands.md). A row is
-- written in one transaction when the API answers 201, so an accepted
-- command is on disk. seq orders a device's commands (MAX + 1 under the
-- feed_state lock that every write transaction takes). States: queued,
-- sent, delivered, succeeded, failed, expired, cancelled; each step has its
-- own timestamp (unix ms). sent_at/sent_to/attempts describe the last
-- delivery attempt (sent_to is the frontend that took it; '' when that
-- frontend could not write it). Commands are not in the audit log: an
-- audit entry takes a change version, which wakes every registry follower,
-- and commands come by the hundred per second; the row itself records who
-- created and who cancelled it, with the key and request.

-- +goose Up
CREATE TABLE commands (
    id              TEXT    PRIMARY KEY,
    device_id       TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    seq             BIGINT  NOT NULL,
    name            TEXT    NOT NULL,
    params          TEXT    NOT NULL,
    idempotency_key TEXT,
    state           TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    created_by      TEXT    NOT NULL,
    key_id          TEXT    NOT NULL,
    request_id      TEXT    NOT NULL DEFAULT '',
    expires_at      BIGINT  NOT NULL,
    sent_at         BIGINT,
    sent_to         TEXT    NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    delivered_at    BIGINT,
    completed_at    BIGINT,
    cancelled_by    TEXT    NOT NULL DEFAULT '',
    message         TEXT    NOT NULL DEFAULT '',
    payload         TEXT    NOT NULL DEFAULT '',
    updated_at      BIGINT  NOT NULL
);
CREATE UNIQUE INDEX commands_device_seq ON commands (device_id, seq);
CREATE UNIQUE INDEX commands_idempotency ON commands (device_id, idempotency_key);
-- The commands still in flight: what dispatch, the expiry sweep and the
-- queue limit read. Small whatever the history.
CREATE INDEX commands_open ON commands (device_id, seq) WHERE state IN ('queued', 'sent', 'delivered');

-- +goose Down
DROP TABLE commands;
