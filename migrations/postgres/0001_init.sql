-- Flashsale order store, PostgreSQL. Times are epoch milliseconds (BIGINT),
-- as in the embedded SQLite store. Tables are created in the first schema of
-- the connection's search_path, so one database can hold several stores.

CREATE TABLE sales (
    sale_id             BIGINT PRIMARY KEY,
    item                TEXT NOT NULL,
    stock               BIGINT NOT NULL,
    -- BIGINT: the limit is a u32 and can exceed a signed INT.
    per_user_limit      BIGINT NOT NULL,
    starts_at           BIGINT NOT NULL,
    ends_at             BIGINT,
    payment_window_secs BIGINT,
    created_at          BIGINT NOT NULL
);

CREATE TABLE orders (
    order_id        BIGINT PRIMARY KEY,
    sale_id         BIGINT NOT NULL,
    -- "C" collation: byte-wise equality and order, the same as SQLite's.
    user_id         VARCHAR(128) COLLATE "C" NOT NULL,
    quantity        BIGINT NOT NULL,
    status          VARCHAR(20) NOT NULL,
    idempotency_key VARCHAR(128) COLLATE "C",
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    expires_at      BIGINT
);

-- The expiry sweep reads only pending orders that carry a deadline.
CREATE INDEX orders_pending_expiry ON orders (expires_at)
    WHERE status = 'pending_payment' AND expires_at IS NOT NULL;

CREATE UNIQUE INDEX orders_idempotency ON orders (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE purchase_intents (
    sale_id    BIGINT NOT NULL,
    user_id    VARCHAR(128) COLLATE "C" NOT NULL,
    quantity   BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (sale_id, user_id)
);
