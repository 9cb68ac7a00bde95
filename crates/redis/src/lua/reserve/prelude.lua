-- tollgate reservation code, first part (after the lease files, before the
-- reservation files of the algorithms): what those files share. Only the
-- library and a reservation call's scripts hold it (src/script.rs); it
-- uses the lease code's LEASE_UNTIL and GIVE_BACK, which a reservation
-- shares with leases (one home: lease/).

-- OVERDRAW[name](key, p, now, units, max_overdraft) is the twin of
-- tollgate::algorithm::overdraw for the algorithms that can be reserved:
-- it charges up to `units` more to the key's state (a fresh one when there
-- is none), at most what remains plus `max_overdraft` (counting any debt
-- an earlier overdraft left), writes the state it changed, and returns the
-- units charged. sliding_log and leaky_bucket have none: they cannot be
-- reserved (tollgate::PolicyError::ReserveNotSupported).
local OVERDRAW = {}
