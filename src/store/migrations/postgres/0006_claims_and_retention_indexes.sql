-- Claims and retention (engine). The heartbeat renews a replica's claims
-- (`WHERE claimed_by = ?`) and retention deletes ended leases by `ended_at`:
-- both by index, not by scanning every lease ever issued. Partial indexes:
-- most rows have no claim, and live rows have no `ended_at`.
CREATE INDEX leases_claimed_by ON leases (claimed_by) WHERE claimed_by IS NOT NULL;
CREATE INDEX leases_ended ON leases (ended_at) WHERE ended_at IS NOT NULL;
