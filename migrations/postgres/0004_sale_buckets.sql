-- A sale's stock buckets: how many Redis hash tags its stock is split over
-- in the distributed mode (1 = every key under one tag, as before).
ALTER TABLE sales ADD COLUMN buckets BIGINT NOT NULL DEFAULT 1;
