-- Issue 17's leftovers (numbered after issue 18's, which came first).

-- +goose Up
-- Finished commands by the time they finished: what -command-retention
-- prunes reads this, not the whole history. Only finished commands have a
-- completed_at.
CREATE INDEX commands_completed ON commands (completed_at) WHERE completed_at IS NOT NULL;
-- The firmware version a device said it runs when it last connected
-- naming one ('': never said): a campaign counts a device that reconnects
-- with the target version as succeeded.
ALTER TABLE device_presence ADD COLUMN firmware TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE device_presence DROP COLUMN firmware;
DROP INDEX commands_completed;
