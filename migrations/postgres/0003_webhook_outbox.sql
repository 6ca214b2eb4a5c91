-- The webhook outbox (src/backend/outbox.rs): one row per order event,
-- written in the same statement or transaction as the order change. The
-- event id is 'evt_' || order_id || '_' || kind, kind being 'accepted' for
-- 'pending_payment' and the status otherwise (outbox::event_id in Rust).
CREATE TABLE webhook_outbox (
    event_id        VARCHAR(64) COLLATE "C" PRIMARY KEY,
    order_id        BIGINT NOT NULL,
    order_status    VARCHAR(20) NOT NULL,
    occurred_at     BIGINT NOT NULL,
    -- pending, delivered, dead
    state           VARCHAR(16) NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    -- Due time of a pending event; while one is claimed, its lease's end.
    next_attempt_at BIGINT NOT NULL,
    last_status     BIGINT,
    last_error      TEXT,
    updated_at      BIGINT NOT NULL
);

-- The dispatcher's claim reads only pending events, by due time.
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE state = 'pending';
