//! Free loopback ports. A port is found by binding `127.0.0.1:0` and releasing it; a process-wide
//! set guarantees this process never hands out the same port twice. Another process may still
//! grab a released port before our child binds it: that race is inherent and rare.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use crate::error::Error;

/// Every port handed out by this process. A std mutex: held only for a set insertion, never
/// across an await.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Bind attempts before giving up (each attempt that hits an already-handed-out port retries).
const ATTEMPTS: usize = 256;

/// Returns a loopback TCP port that was free a moment ago and that this process has never handed
/// out before.
pub fn free_port() -> Result<u16, Error> {
    for _ in 0..ATTEMPTS {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| Error::Io {
            context: "binding 127.0.0.1:0 to find a free port".into(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| Error::Io {
                context: "reading the address of a bound listener".into(),
                source,
            })?
            .port();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(Error::NoFreePort)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_even_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..50).map(|_| free_port().unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = BTreeSet::new();
        let mut count = 0;
        for thread in threads {
            for port in thread.join().unwrap() {
                assert_ne!(port, 0);
                all.insert(port);
                count += 1;
            }
        }
        assert_eq!(all.len(), count, "a port was handed out twice");
    }

    #[test]
    fn handed_out_ports_are_bindable() {
        let port = free_port().unwrap();
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
