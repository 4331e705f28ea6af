-- As SQLite's 0017: a lease's owner never changes but its state does, and
-- with `state` in `leases_owner` every state change added an entry to the
-- index. Owner queries (lease lists and bulk revocations by issuer and
-- subject) find the owner's rows through the index and filter on their state.
DROP INDEX leases_owner;
CREATE INDEX leases_owner ON leases (issuer, subject);
