-- Write cost (issue 12): a lease's owner never changes, but its state does
-- (pending, active, revoking, ended), and with `state` in `leases_owner`
-- every state change moved the lease's entry: one more page in the WAL per
-- change, at a random place in the index (owners are not ordered by time).
-- Owner queries (lease lists and bulk revocations by issuer and subject)
-- find the owner's rows through the index and read their state from them.
DROP INDEX leases_owner;
CREATE INDEX leases_owner ON leases (issuer, subject);
