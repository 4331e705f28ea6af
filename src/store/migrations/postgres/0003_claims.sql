-- Expiry-worker claims. With several lessor replicas on one store, `due()`
-- marks the leases it hands out (claimer id, until when in unix ms by the
-- database's clock) so other replicas skip them until the claim times out.
-- Recording the outcome clears the claim.
ALTER TABLE leases ADD COLUMN claimed_by TEXT;
ALTER TABLE leases ADD COLUMN claimed_until BIGINT;
