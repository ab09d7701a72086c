-- feed_id names this database to the followers of its change feed
-- (frontends, routers, livefeeds). A follower resuming from a cached copy
-- checks it: versions of another database (a new one, another
-- deployment's) would silently mix two registries. Random, set once by
-- the first replica that starts on the database (api/db.go).

-- +goose Up
ALTER TABLE feed_state ADD COLUMN feed_id TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE feed_state DROP COLUMN feed_id;
