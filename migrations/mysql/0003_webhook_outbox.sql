-- The webhook outbox (src/backend/outbox.rs): one row per order event,
-- written in the same transaction as the order change. Event ids are ASCII
-- ('evt_<order id>_<kind>'), compared byte-wise like the other stores.
CREATE TABLE webhook_outbox (
    event_id        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    order_id        BIGINT NOT NULL,
    order_status    VARCHAR(20) NOT NULL,
    occurred_at     BIGINT NOT NULL,
    -- pending, delivered, dead
    state           VARCHAR(16) NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    -- Due time of a pending event; while one is claimed, its lease's end.
    next_attempt_at BIGINT NOT NULL,
    last_status     BIGINT NULL,
    last_error      TEXT NULL,
    updated_at      BIGINT NOT NULL,
    -- The dispatcher's claim: pending events by due time.
    KEY webhook_outbox_due (state, next_attempt_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
