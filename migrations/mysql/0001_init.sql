-- Flashsale order store, MariaDB / MySQL (InnoDB). Times are epoch
-- milliseconds (BIGINT), as in the embedded SQLite store.
--
-- User ids and idempotency keys are VARBINARY: byte-wise equality and order
-- (as in SQLite), no case folding and no trailing-space padding, so "alice"
-- and "Alice " stay different buyers. Both are at most 128 bytes upstream.

CREATE TABLE sales (
    sale_id             BIGINT NOT NULL PRIMARY KEY,
    item                TEXT NOT NULL,
    stock               BIGINT NOT NULL,
    -- BIGINT: the limit is a u32 and can exceed a signed INT.
    per_user_limit      BIGINT NOT NULL,
    starts_at           BIGINT NOT NULL,
    ends_at             BIGINT NULL,
    payment_window_secs BIGINT NULL,
    created_at          BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE orders (
    order_id        BIGINT NOT NULL PRIMARY KEY,
    sale_id         BIGINT NOT NULL,
    user_id         VARBINARY(128) NOT NULL,
    quantity        BIGINT NOT NULL,
    status          VARCHAR(20) NOT NULL,
    idempotency_key VARBINARY(128) NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    expires_at      BIGINT NULL,
    -- The expiry sweep: pending orders by deadline.
    KEY orders_status_expiry (status, expires_at),
    -- Many NULL keys are allowed; a key is unique per user.
    UNIQUE KEY orders_idempotency (user_id, idempotency_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE purchase_intents (
    sale_id    BIGINT NOT NULL,
    user_id    VARBINARY(128) NOT NULL,
    quantity   BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (sale_id, user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
