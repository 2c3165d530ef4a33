//! The lease workload: some keys hang on leases kept alive by client sessions, others on leases
//! nobody renews, while the nemesis kills and pauses members. A monitor reads all keys
//! linearizably twice a second and checks the lease guarantees:
//! - a kept-alive lease's key never disappears while its last acknowledged renewal is younger than
//!   the TTL (the server may not expire it early);
//! - an abandoned lease's key disappears within TTL + `grace` after its grant.

use std::collections::BTreeSet;
use std::time::Duration;

use conclave_client::{GetOptions, LeaseLoss, PutOptions, Session, SessionOptions};

use crate::connect::client;
use serde::Serialize;
use tokio::time::Instant;

const PREFIX: &str = "jepsen/lease/";

/// Settings of the workload.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub kept: usize,
    pub abandoned_per_second: usize,
    pub ttl: i64,
    pub duration: Duration,
    /// How late after its TTL an abandoned lease may still be there.
    pub grace: Duration,
}

/// A violated lease guarantee.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    pub key: String,
    pub detail: String,
}

/// What the run found.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub kept: usize,
    pub kept_lost_by_client: usize,
    /// How each lost session learned it: "not-found" (the server said the lease was gone) or
    /// "expired" (no renewal got through within the TTL), with the time since the start in ms.
    pub losses: Vec<(String, &'static str, u128)>,
    pub abandoned: usize,
    pub abandoned_expired: usize,
    /// Longest time from grant to disappearance of an abandoned lease's key, in ms.
    pub slowest_expiry_ms: u128,
    pub anomalies: Vec<Anomaly>,
    /// Every abandoned lease, for the history file (not in results.json).
    #[serde(skip)]
    pub abandoned_leases: Vec<AbandonedLease>,
}

/// An abandoned lease as the monitor saw it, times in ms since the workload started.
#[derive(Debug, Clone, Serialize)]
pub struct AbandonedLease {
    pub key: String,
    pub granted_ms: u128,
    /// When the monitor first saw its key gone (None: never).
    pub gone_ms: Option<u128>,
}

struct Abandoned {
    key: String,
    granted: Instant,
    gone: Option<Instant>,
}

/// Runs the workload; the nemesis runs beside it.
pub async fn run(endpoints: Vec<String>, s: Settings) -> anyhow::Result<Outcome> {
    let mut sessions: Vec<(String, Session)> = Vec::new();
    for i in 0..s.kept {
        let c = client(&endpoints, i).await?;
        let session = Session::new(&c, SessionOptions::new(s.ttl)).await?;
        let key = format!("{PREFIX}kept/{i}");
        session.put(key.clone(), "alive").await?;
        sessions.push((key, session));
    }
    let monitor = client(&endpoints, 0).await?;
    let granter = client(&endpoints, 1).await?;
    let mut abandoned: Vec<Abandoned> = Vec::new();
    let mut anomalies = Vec::new();
    let mut losses: Vec<(String, &'static str, u128)> = Vec::new();
    let started = Instant::now();
    let mut next_grant = started;
    let mut n = 0;
    let ttl = Duration::from_secs(s.ttl as u64);
    // Run, then give the last abandoned leases time to expire.
    let end = started + s.duration + ttl + s.grace;
    while Instant::now() < end {
        let now = Instant::now();
        if now < started + s.duration && now >= next_grant {
            next_grant = now + Duration::from_secs(1);
            for _ in 0..s.abandoned_per_second {
                n += 1;
                let key = format!("{PREFIX}abandoned/{n}");
                let granted = Instant::now();
                let ok = match granter.lease().grant(s.ttl, None).await {
                    Ok(l) => granter
                        .kv()
                        .put(key.clone(), "x", PutOptions::new().with_lease(l.id))
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                if ok {
                    abandoned.push(Abandoned {
                        key,
                        granted,
                        gone: None,
                    });
                }
            }
        }
        // Deadlines are taken before the read: a key missing in the read was deleted after them.
        let before: Vec<(Option<Instant>, bool)> = sessions
            .iter()
            .map(|(_, s)| (Some(s.keep_alive().deadline()), s.is_lost()))
            .collect();
        let read = monitor
            .kv()
            .get(PREFIX, GetOptions::new().with_prefix().with_keys_only())
            .await;
        let read_at = Instant::now();
        for (key, session) in &sessions {
            if losses.iter().any(|(k, _, _)| k == key) {
                continue;
            }
            if let Some(loss) = session.loss() {
                let kind = match loss {
                    LeaseLoss::NotFound => "not-found",
                    LeaseLoss::Expired => "expired",
                };
                // "Not found" while the last acknowledged renewal had time left: the server
                // dropped a lease it had promised to keep.
                let left = session
                    .keep_alive()
                    .deadline()
                    .saturating_duration_since(read_at);
                if loss == LeaseLoss::NotFound {
                    anomalies.extend(not_found_early(key, left));
                }
                losses.push((key.clone(), kind, (read_at - started).as_millis()));
            }
        }
        if let Ok(r) = read {
            let present: BTreeSet<String> = r
                .kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect();
            for ((key, _), (deadline, lost)) in sessions.iter().zip(&before) {
                let left = deadline.map(|d| d.saturating_duration_since(read_at));
                anomalies.extend(kept_gone_early(key, present.contains(key), *lost, left));
            }
            for a in abandoned.iter_mut().filter(|a| a.gone.is_none()) {
                let age = read_at - a.granted;
                if !present.contains(&a.key) {
                    a.gone = Some(read_at);
                } else if let Some(anomaly) = abandoned_overdue(&a.key, age, ttl + s.grace) {
                    anomalies.push(anomaly);
                    a.gone = Some(read_at);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let kept_lost_by_client = sessions.iter().filter(|(_, s)| s.is_lost()).count();
    let slowest_expiry_ms = abandoned
        .iter()
        .filter_map(|a| a.gone.map(|g| (g - a.granted).as_millis()))
        .max()
        .unwrap_or(0);
    Ok(Outcome {
        kept: sessions.len(),
        kept_lost_by_client,
        losses,
        abandoned: abandoned.len(),
        abandoned_expired: abandoned.iter().filter(|a| a.gone.is_some()).count(),
        slowest_expiry_ms,
        anomalies,
        abandoned_leases: abandoned
            .iter()
            .map(|a| AbandonedLease {
                key: a.key.clone(),
                granted_ms: (a.granted - started).as_millis(),
                gone_ms: a.gone.map(|g| (g - started).as_millis()),
            })
            .collect(),
    })
}

/// A renewal's deadline closer than this to a read is not trusted to the millisecond (clock
/// reads and scheduling): a key missing that close to its deadline is not flagged.
const MARGIN: Duration = Duration::from_millis(200);

/// A kept-alive key missing from a read (`present` false) although its client had not seen the
/// lease lost (`lost_by_client` false) and its last acknowledged renewal, taken before the read,
/// still had `left` to run: the server expired the lease early.
pub fn kept_gone_early(
    key: &str,
    present: bool,
    lost_by_client: bool,
    left: Option<Duration>,
) -> Option<Anomaly> {
    let left = left?;
    (!present && !lost_by_client && left > MARGIN).then(|| Anomaly {
        key: key.to_string(),
        detail: format!(
            "kept-alive lease gone {} ms before its renewal's TTL ran out",
            left.as_millis()
        ),
    })
}

/// The server answered a renewal "not found" while the last acknowledged renewal still had
/// `left` to run: it dropped a lease it had promised to keep.
pub fn not_found_early(key: &str, left: Duration) -> Option<Anomaly> {
    (left > MARGIN).then(|| Anomaly {
        key: key.to_string(),
        detail: format!(
            "the server no longer knew a kept-alive lease {} ms before its renewal's TTL ran out",
            left.as_millis()
        ),
    })
}

/// An abandoned lease's key still there `age` after its grant, past `limit` (TTL + grace): the
/// lease did not expire in time.
pub fn abandoned_overdue(key: &str, age: Duration, limit: Duration) -> Option<Anomaly> {
    (age > limit).then(|| Anomaly {
        key: key.to_string(),
        detail: format!(
            "abandoned lease still there {} ms after its grant (TTL + grace: {} ms)",
            age.as_millis(),
            limit.as_millis()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_lease_expired_early_is_flagged() {
        // Gone with a second of its TTL left, the client unaware: the server expired it early.
        assert!(kept_gone_early("k", false, false, Some(S(1000))).is_some());
        // The same, answered "not found" to a renewal.
        assert!(not_found_early("k", S(1000)).is_some());
    }

    #[test]
    fn a_lease_gone_in_time_or_given_up_by_its_client_passes() {
        assert!(
            kept_gone_early("k", true, false, Some(S(1000))).is_none(),
            "still there"
        );
        assert!(
            kept_gone_early("k", false, true, Some(S(1000))).is_none(),
            "client gave up"
        );
        assert!(
            kept_gone_early("k", false, false, Some(S(100))).is_none(),
            "within the margin"
        );
        assert!(
            kept_gone_early("k", false, false, None).is_none(),
            "no renewal known"
        );
        assert!(not_found_early("k", S(0)).is_none(), "its TTL had run out");
    }

    #[test]
    fn an_abandoned_lease_that_outlives_its_ttl_and_grace_is_flagged() {
        assert!(abandoned_overdue("k", S(9000), S(8000)).is_some());
        assert!(abandoned_overdue("k", S(7000), S(8000)).is_none());
    }
}
