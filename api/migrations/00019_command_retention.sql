-- +goose Up
-- Finished commands by the time they finished: what -command-retention
-- prunes reads this, not the whole history. Only finished commands have a
-- completed_at.
CREATE INDEX commands_completed ON commands (completed_at) WHERE completed_at IS NOT NULL;

-- +goose Down
DROP INDEX commands_completed;
