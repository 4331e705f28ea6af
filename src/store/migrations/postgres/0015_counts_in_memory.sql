-- SQLite's 0015 moves its live-lease counts into the writer's memory. Not here:
-- several replicas share a PostgreSQL store, so its counts stay in the
-- trigger-kept tables every replica reads (0009). Nothing to change.
SELECT 1;
