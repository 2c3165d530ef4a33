//! Watch fan-out latency and lease keep-alive throughput.
//!
//! `watch-latency`: `--watchers` watches on one prefix, spread over `--streams` watch streams
//! (round-robin over the connections); one writer puts `--total` values under the prefix at
//! `--rate` per second. Each value carries its send time, so every delivered event yields one
//! put-to-event latency. With `--rss-pids` (server processes on this machine) it also reports
//! the servers' resident memory per watcher, measured before and after the watches are created.
//!
//! `lease-keepalive`: each of `--clients` grants a lease and renews it over its own keep-alive
//! stream, one request in flight per stream, `--total` renewals in all (like etcd's benchmark).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use conclave_proto::etcdserverpb::lease_client::LeaseClient;
use conclave_proto::etcdserverpb::watch_client::WatchClient;
use conclave_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, WatchCreateRequest,
    WatchRequest, kv_client::KvClient, watch_request::RequestUnion,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::report::Stats;

/// Resident memory of a process on this machine, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS for pid {pid}"))
}

fn total_rss(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|p| rss_kib(*p)).sum()
}

/// What a watch-latency run measured besides latencies.
pub struct WatchRun {
    pub stats: Stats,
    pub elapsed: Duration,
    /// Server memory per watcher in bytes, when `--rss-pids` was given.
    pub bytes_per_watcher: Option<u64>,
}

const PREFIX: &[u8] = b"bench-watch/";

/// Runs the watch fan-out benchmark.
pub async fn watch_latency(
    channels: &[Channel],
    watchers: usize,
    streams: usize,
    writes: u64,
    rate: u64,
    rss_pids: &[u32],
) -> anyhow::Result<WatchRun> {
    if watchers == 0 || streams == 0 {
        bail!("--watchers and --streams must be at least 1");
    }
    let before = if rss_pids.is_empty() {
        None
    } else {
        Some(total_rss(rss_pids)?)
    };
    let epoch = Instant::now();
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<Duration>();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(streams);
    let mut end = PREFIX.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut holders = Vec::new();
    for s in 0..streams {
        let count = watchers / streams + usize::from(s < watchers % streams);
        let ch = channels[s % channels.len()].clone();
        let (req_tx, req_rx) = mpsc::channel(count.max(1));
        // Queue the creates before opening the stream: etcd sends its response headers only with
        // the first response, so waiting for the stream first would wait forever.
        for _ in 0..count {
            req_tx
                .send(WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                        key: PREFIX.to_vec(),
                        range_end: end.clone(),
                        ..Default::default()
                    })),
                })
                .await
                .context("creating a watch")?;
        }
        let mut responses = WatchClient::new(ch)
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .context("opening a watch stream")?
            .into_inner();
        let lat_tx = lat_tx.clone();
        let ready_tx = ready_tx.clone();
        holders.push(req_tx);
        tokio::spawn(async move {
            let mut created = 0;
            if count == 0 {
                let _ = ready_tx.send(()).await;
            }
            while let Ok(Some(resp)) = responses.message().await {
                if resp.created {
                    created += 1;
                    if created == count {
                        let _ = ready_tx.send(()).await;
                    }
                }
                let now = epoch.elapsed();
                for e in resp.events {
                    let sent =
                        e.kv.and_then(|kv| kv.value.get(..8).map(|b| b.to_vec()))
                            .and_then(|b| <[u8; 8]>::try_from(b).ok())
                            .map(|b| Duration::from_nanos(u64::from_be_bytes(b)));
                    if let Some(sent) = sent {
                        let _ = lat_tx.send(now.saturating_sub(sent));
                    }
                }
            }
        });
    }
    drop(lat_tx);
    for _ in 0..streams {
        ready_rx
            .recv()
            .await
            .context("a watch stream ended early")?;
    }
    let after = if rss_pids.is_empty() {
        None
    } else {
        Some(total_rss(rss_pids)?)
    };

    let mut kv = KvClient::new(channels[0].clone());
    let started = Instant::now();
    let gap = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    for i in 0..writes {
        if let Some(gap) = gap {
            tokio::time::sleep_until(started + gap * i as u32).await;
        }
        let sent = epoch.elapsed().as_nanos() as u64;
        let mut value = sent.to_be_bytes().to_vec();
        value.extend_from_slice(&[0u8; 8]);
        kv.put(PutRequest {
            key: [PREFIX, format!("{}", i % 100).as_bytes()].concat(),
            value,
            ..Default::default()
        })
        .await
        .context("put")?;
    }
    let expected = writes * watchers as u64;
    let mut stats = Stats::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.ok < expected {
        match tokio::time::timeout_at(deadline, lat_rx.recv()).await {
            Ok(Some(l)) => stats.record_ok(l),
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    if stats.ok < expected {
        bail!(
            "only {} of {} events arrived within 30 s of the last write",
            stats.ok,
            expected
        );
    }
    drop(holders);
    Ok(WatchRun {
        stats,
        elapsed,
        bytes_per_watcher: before
            .zip(after)
            .map(|(b, a)| a.saturating_sub(b) * 1024 / watchers as u64),
    })
}

/// Runs the keep-alive benchmark; returns the stats and the elapsed time.
pub async fn lease_keepalive(
    channels: &[Channel],
    clients: usize,
    total: u64,
    timeout: Duration,
) -> anyhow::Result<(Stats, Duration)> {
    let next = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    let mut leases = Vec::new();
    for c in 0..clients {
        let mut lease = LeaseClient::new(channels[c % channels.len()].clone());
        let id = lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .context("lease grant")?
            .into_inner()
            .id;
        leases.push(id);
        streams.push((id, lease));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (id, mut lease) in streams {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let (tx, rx) = mpsc::channel(1);
            let mut rx = Some(rx);
            let mut answers = None;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let started = std::time::Instant::now();
                tx.send(LeaseKeepAliveRequest { id }).await?;
                // Opened after the first request is queued: etcd answers headers with data.
                let answers = match &mut answers {
                    Some(a) => a,
                    None => answers.insert(
                        lease
                            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(
                                rx.take().context("keep-alive stream opened twice")?,
                            ))
                            .await?
                            .into_inner(),
                    ),
                };
                match tokio::time::timeout(timeout, answers.message()).await {
                    Ok(Ok(Some(r))) if r.ttl > 0 => stats.record_ok(started.elapsed()),
                    Ok(Ok(Some(_))) => stats.record_err(&tonic::Status::not_found("lease expired")),
                    Ok(Ok(None)) => bail!("keep-alive stream ended"),
                    Ok(Err(status)) => bail!("keep-alive stream failed: {status}"),
                    Err(_) => stats.record_err(&tonic::Status::deadline_exceeded("timeout")),
                }
            }
            anyhow::Ok(stats)
        }));
    }
    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(t.await.context("keep-alive task failed")??);
    }
    let elapsed = started.elapsed();
    let mut lease = LeaseClient::new(channels[0].clone());
    for id in leases {
        let _ = lease.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    Ok((stats, elapsed))
}
