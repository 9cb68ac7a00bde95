//! Free loopback ports for tests, each handed out once per test process.
//!
//! A port drawn from the kernel (bind to port 0, then close) is free only
//! until someone takes it; parallel tests in one process that each draw
//! their own can get the same one. Every port handed out here is
//! remembered for the life of the process and never handed out again, so
//! tests using [`free_port`] (and the Redis servers of [`crate::redis`],
//! which draw theirs here too) cannot collide with each other. Collisions
//! with other processes remain possible: whoever binds should retry on a
//! fresh port when binding fails.
//!
//! ```
//! let a = tollgate_testkit::ports::free_port();
//! let b = tollgate_testkit::ports::free_port();
//! assert_ne!(a, b);
//! ```

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

/// How many free-port candidates to draw from the kernel before giving up.
const PORT_CANDIDATES: usize = 500;

/// Ports (including companion ports such as a cluster bus) handed out by
/// this process. Never released: a dropped server's port may still be in
/// `TIME_WAIT`, and a test process uses few enough that this set stays
/// small.
static RESERVED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free loopback port that this process has not handed out before.
///
/// # Panics
/// When no loopback port can be bound, or none is found in 500 tries.
pub fn free_port() -> u16 {
    reserve(None)
}

/// As [`free_port`]; with `companion` set, a port whose `port + companion`
/// is a valid port, free too, and reserved with it (a Redis Cluster node's
/// bus listens on `port + 10000`).
pub(crate) fn reserve(companion: Option<u16>) -> u16 {
    for _ in 0..PORT_CANDIDATES {
        let port = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(address) => address.port(),
            Err(e) => panic!("cannot bind a loopback port to find a free one: {e}"),
        };
        // The listener is closed here: the port is free, if only until
        // someone else takes it (callers retry on another port then).
        let other = match companion {
            None => None,
            Some(offset) => match port.checked_add(offset) {
                Some(other) if TcpListener::bind((Ipv4Addr::LOCALHOST, other)).is_ok() => {
                    Some(other)
                }
                _ => continue,
            },
        };
        let mut reserved = RESERVED_PORTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if reserved.contains(&port) || other.is_some_and(|other| reserved.contains(&other)) {
            continue;
        }
        reserved.insert(port);
        reserved.extend(other);
        return port;
    }
    panic!("no free loopback port found in {PORT_CANDIDATES} tries");
}
