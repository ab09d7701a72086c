-- Only commands posted with an idempotency key are in the idempotency
-- index. A command without one (most) was an entry keyed (device, NULL),
-- which no lookup ever reads (a lookup names its key, and NULLs are never
-- equal), yet its insert wrote an index page at a random place: one page
-- more in every create's commit, in the WAL on SQLite, in the WAL and the
-- index on PostgreSQL (docs/performance.md, "Commands round trip"). The
-- index stays unique where it matters: two commands of a device can never
-- share a key.

-- +goose Up
DROP INDEX commands_idempotency;
CREATE UNIQUE INDEX commands_idempotency ON commands (device_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- +goose Down
DROP INDEX commands_idempotency;
CREATE UNIQUE INDEX commands_idempotency ON commands (device_id, idempotency_key);
