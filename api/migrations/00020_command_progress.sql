-- Firmware progress (issue 17): what a device reports of a command that
-- takes long, between received and its result (wire format 1.2). progress
-- is the last stage it named ('' none: devices of wire format 1.1 never
-- do): downloading (progress_bytes: bytes received so far), verifying,
-- installing; progress_at is when it was stored (unix ms). A campaign
-- carries them into its devices' states, with the bytes.

-- +goose Up
ALTER TABLE commands ADD COLUMN progress TEXT NOT NULL DEFAULT '';
ALTER TABLE commands ADD COLUMN progress_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE commands ADD COLUMN progress_at BIGINT;
ALTER TABLE campaign_devices ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE campaign_devices DROP COLUMN bytes;
ALTER TABLE commands DROP COLUMN progress_at;
ALTER TABLE commands DROP COLUMN progress_bytes;
ALTER TABLE commands DROP COLUMN progress;
