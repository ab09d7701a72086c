// Package api is drover's control plane: `drover api`, a REST API (JSON
// over HTTP, under /v1/) for the device registry, device credentials,
// fleets, vehicle classes, regions, live-client tokens, operators and API
// keys, the audit log, and the change feed that frontends and routers
// follow. The operator's guide is docs/api.md; the contract is
// openapi.yaml (served at /v1/openapi.json, and every API test's request
// and answer is validated against it).
//
// # Storage
//
// SQLite by default (modernc.org/sqlite, pure Go: one file under the data
// directory, WAL, synchronous=FULL, writes through a pool of one
// connection because SQLite has one writer), PostgreSQL (pgx) for several
// replicas. One schema and one text per statement for both
// (migrations/, applied at start by goose; $1 placeholders, which both
// drivers accept). The dialect differences are named where they are: how a
// write transaction locks the feed row (db.go, the one that matters for
// correctness), and two for the speed of bulk imports (db.go, db_bulk.go).
//
// # Contracts
//
//   - Versions. Every change takes a version from the one row of
//     feed_state, which every write transaction of the registry locks
//     first: transactions commit in version order, versions only grow,
//     and a follower that has applied every change up to V holds exactly
//     the registry at V. Command writes (group commits) take no version
//     and do not lock it.
//   - Change feed. GET /v1/feed/snapshot streams every device (NDJSON,
//     header with the version V it includes at least, trailer with the
//     count); GET /v1/feed/changes?since=V&wait=30s answers the devices
//     changed after V as whole states, in version order, or 410
//     resync_required when V is older than the kept tombstones. A change
//     committed on any replica wakes long polls on every replica within
//     -feed-poll (each replica reads the version; LISTEN/NOTIFY was not
//     used: it needs a dedicated connection and breaks behind
//     transaction-pooling proxies, and polling one row is cheap). Every
//     answer names the database's feed id (migration 00002), so that a
//     follower never mixes two databases. GET /v1/feed/live-tokens answers
//     livefeeds the whole set of live-client tokens in force once one
//     changed. The wire types are internal/apiclient's, the followers'.
//   - The same host's data path. -follower-key-file keeps a working
//     follower key in a file (local.go); Config.Seed creates missing
//     devices at start (drover all -simulate).
//   - Secrets. Device tokens, live-client tokens and API key secrets are
//     256-bit random, shown once, stored as hex SHA-256 (the registry's
//     and the clients file's format), compared in constant time, never
//     logged. API keys are drv_<key id>_<secret>: the id is the primary
//     key, so authentication is one lookup, and mostly none: each replica
//     caches the active keys it read (keycache.go), the secret and the
//     expiry still checked on every request. A revoke, an operator's
//     update or delete evicts at its commit on the replica that made it
//     and, on PostgreSQL, on every other through a pg_notify in the same
//     transaction; a replica not listening does not use its cache, and
//     empties it when it listens again; -key-cache-max-age bounds the
//     rest.
//   - Authorization. A key's operator has a role (admin, operator,
//     viewer, follower) and fleets (or "*"). An object outside the
//     caller's fleets answers 404, exactly like one that does not exist;
//     a role that may not act answers 403.
//   - Failed authentications are counted per source address and per key
//     id (internal/auth's limiter); past -auth-failures within
//     -auth-window both are refused (429,
//     before the key is even looked at) for a backoff that doubles. 401
//     is one answer for every failure.
//   - Audit. Every change writes an audit entry (who, what, before,
//     after, when) in the same transaction as the change.
//   - Bulk import is one transaction: all rows or none, with a report of
//     every refused row.
//   - Commands (commands.go, commands_delivery.go; docs/commands.md). A
//     command is committed before its 201, ordered per device by seq,
//     bounded per device (429 queue_full, nothing dropped). Frontends
//     long-poll GET /v1/frontends/{id}/commands (follower role) for the
//     commands of the devices presence puts on them, marked sent in the
//     same write; a command is due again when its device connected since
//     the last attempt, when a frontend reports it undeliverable, or after
//     a doubling resend delay, and an attempt in flight holds the device's
//     later commands back. An expired command is never dispatched. Device
//     reports move it to delivered, succeeded or failed; the device's word
//     wins over an expiry marked meanwhile. GET /v1/commands/events
//     streams this replica's command changes (server-sent events), each
//     filtered by the device's fleet read when the event is sent. Command
//     creates, dispatch marks and report posts group-commit (db_group.go):
//     those that arrive while a commit runs share the next transaction
//     (a failing one rolls back alone: the group runs again with a
//     savepoint per write), each answered only after that transaction
//     committed; one group at a time on SQLite, one per lane on
//     PostgreSQL (creates in their device's lane, deliveries in lane 0,
//     so that no two groups in flight hold the same device), where a
//     create locks its device's row, so that one device's creates take
//     turns (seq, queue limit, idempotency key), and a group that
//     PostgreSQL aborted as a deadlock victim runs again. Finished commands
//     are deleted -command-retention after they finished
//     (commands_retention.go), except each device's newest and the offers
//     of running campaigns.
//   - Firmware images (firmware.go; docs/firmware.md): streamed to the
//     local store and hashed on the way, written atomically, refused whole
//     (nothing kept) when over -firmware-max-bytes or not the SHA-256 the
//     uploader gave; served with range requests (ETag = SHA-256) so that a
//     transfer resumes from its last byte. Fleet-wide: admins of every
//     fleet upload and delete (409 while a campaign names it), readers
//     read. Campaigns (campaigns.go): devices selected at creation, a tick
//     per -command-poll carrying firmware_update command outcomes into
//     per-device states (a device that connects naming the target version,
//     X-Drover-Firmware through its frontend's presence, has succeeded), applying the abort rule and offering more within
//     per_minute and max_concurrent; each tick is one write transaction
//     whose changes are conditional on what it read, so replicas may tick
//     together.
//   - Bootstrap. A start that finds no operator creates an admin of every
//     fleet and writes its key to a 0600 file (-bootstrap-key-file),
//     logging the path, never the key.
package api
