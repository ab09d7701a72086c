-- firmware: uploaded firmware images (docs/firmware.md). The image itself
-- is a file of the api's data directory (firmware/<id>); the row says what
-- it is. classes is a JSON array of vehicle class ids ([] for any).

-- +goose Up
CREATE TABLE firmware (
    id         TEXT   PRIMARY KEY,
    version    TEXT   NOT NULL,
    classes    TEXT   NOT NULL,
    size       BIGINT NOT NULL,
    sha256     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT   NOT NULL
);
CREATE INDEX firmware_version ON firmware (version);

-- +goose Down
DROP TABLE firmware;
