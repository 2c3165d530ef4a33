//! Plain HTTP on the client port, next to gRPC (HTTP/1.1 and HTTP/2 on the same listener):
//! `/health` (etcd's JSON: healthy when a leader is known and a linearizable read succeeds),
//! `/livez` (the process and its raft thread run), `/readyz` (ready to serve reads and writes:
//! leader known, linearizable read, not a learner), `/version` (JSON), `/metrics` (Prometheus
//! text). Also [`Front`], the port's front service: it counts every gRPC call by method and code
//! and sends KV calls straight to their service.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{self, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::{BoxFuture, Either};
use tonic::codegen::Service;
use tower::ServiceExt;

use crate::api::Context;
use crate::api::maintenance::ETCD_API_VERSION;
use crate::metrics;
use crate::storage;

/// How long a health check may wait for its linearizable read.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The HTTP routes, served with the gRPC services.
pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(render_metrics))
        .with_state(ctx)
}

/// Why this member cannot serve linearizable requests right now, if it cannot.
async fn unready(ctx: &Context) -> Option<String> {
    if ctx.node.status().leader == 0 {
        return Some("no leader".into());
    }
    if let Some(a) = ctx.alarms.list().first() {
        let kind = conclave_proto::etcdserverpb::AlarmType::try_from(a.alarm)
            .map_or("UNKNOWN", |t| t.as_str_name());
        return Some(format!("ALARM {kind}"));
    }
    match tokio::time::timeout(CHECK_TIMEOUT, ctx.node.read_barrier()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("linearizable read failed: {e}")),
        Err(_) => Some("linearizable read timed out".into()),
    }
}

async fn health(State(ctx): State<Arc<Context>>) -> Response {
    let (code, body) = match unready(&ctx).await {
        None => (
            StatusCode::OK,
            r#"{"health":"true","reason":""}"#.to_string(),
        ),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(r#"{{"health":"false","reason":{why:?}}}"#),
        ),
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn livez(State(ctx): State<Arc<Context>>) -> Response {
    if ctx.node.is_running() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "raft stopped\n").into_response()
    }
}

async fn readyz(State(ctx): State<Arc<Context>>) -> Response {
    let learner = ctx
        .membership
        .get(ctx.node.member_id)
        .is_some_and(|m| m.is_learner);
    let why = if learner {
        Some("learner: serves serializable reads only".to_string())
    } else {
        unready(&ctx).await
    };
    match why {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn version() -> Response {
    let body = format!(
        r#"{{"etcdserver":"{ETCD_API_VERSION}","etcdcluster":"{}","conclave":"{}"}}"#,
        cluster_version(),
        env!("CARGO_PKG_VERSION")
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// etcd reports the cluster version as major.minor.0.
fn cluster_version() -> String {
    let mut parts = ETCD_API_VERSION.split('.');
    format!(
        "{}.{}.0",
        parts.next().unwrap_or("3"),
        parts.next().unwrap_or("5")
    )
}

async fn render_metrics(State(ctx): State<Arc<Context>>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    let raft = ctx.node.status();
    metrics::gauge(
        &mut out,
        "etcd_server_has_leader",
        "1 when this member knows a leader.",
        u8::from(raft.leader != 0),
    );
    metrics::gauge(
        &mut out,
        "etcd_server_is_leader",
        "1 when this member is the leader.",
        u8::from(raft.is_leader),
    );
    metrics::gauge(
        &mut out,
        "etcd_server_is_learner",
        "1 when this member is a learner.",
        u8::from(
            ctx.membership
                .get(ctx.node.member_id)
                .is_some_and(|m| m.is_learner),
        ),
    );
    metrics::gauge(&mut out, "etcd_server_term", "Raft term.", raft.term);
    metrics::gauge(
        &mut out,
        "etcd_server_proposals_committed_total",
        "Raft commit index.",
        raft.commit,
    );
    metrics::gauge(
        &mut out,
        "conclave_raft_last_index",
        "Index of the last raft log entry.",
        raft.last_index,
    );
    metrics::gauge(
        &mut out,
        "etcd_server_applied_index",
        "Index of the last applied raft entry.",
        ctx.node.applied_index(),
    );
    metrics::gauge(
        &mut out,
        "etcd_mvcc_db_total_size_in_bytes",
        "Size of the database file.",
        storage::file_size(&ctx.data_dir),
    );
    metrics::gauge(
        &mut out,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Stored key-value history (what the space quota measures).",
        ctx.store.stored_bytes(),
    );
    metrics::gauge(
        &mut out,
        "etcd_server_quota_backend_bytes",
        "The space quota.",
        ctx.limits.quota_bytes,
    );
    metrics::gauge(
        &mut out,
        "conclave_alarms",
        "Raised alarms.",
        ctx.alarms.list().len(),
    );
    metrics::gauge(
        &mut out,
        "etcd_debugging_mvcc_keys_total",
        "Live keys.",
        ctx.store.key_count(),
    );
    metrics::gauge(
        &mut out,
        "etcd_mvcc_current_revision",
        "Newest revision.",
        ctx.store.revision(),
    );
    metrics::gauge(
        &mut out,
        "etcd_mvcc_compact_revision",
        "Compaction point.",
        ctx.store.compacted_revision(),
    );
    metrics::gauge(
        &mut out,
        "etcd_debugging_mvcc_watcher_total",
        "Watches on this member.",
        ctx.hub.watcher_count(),
    );
    metrics::gauge(
        &mut out,
        "etcd_debugging_mvcc_watch_stream_total",
        "Watch streams on this member.",
        ctx.hub.stream_count(),
    );
    metrics::gauge(
        &mut out,
        "etcd_debugging_lease_total",
        "Leases.",
        ctx.lessor.len(),
    );
    metrics::gauge(
        &mut out,
        "conclave_cluster_members",
        "Members in the member table (learners included).",
        ctx.membership.list().len(),
    );
    metrics::get().render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The client port's front service: counts every gRPC call by method and code (timed to its
/// response headers; a call that fails before answering carries its code in them, trailers-only;
/// one that answers counts as OK, a stream's later end is not seen here), and hands KV calls,
/// nearly all of the traffic, straight to the KV service. Everything else goes through the
/// router (the other gRPC services and the plain HTTP routes).
///
/// Why not an axum middleware and the router for everything: per call, the middleware cloned and
/// boxed the routed service and boxed the request's future twice more, and the router looked up
/// the path and went through two more layers of futures; that was ~4% of a member's CPU under
/// 256-client put load (docs/benchmarks.md, ninth session). This is one box per call.
#[derive(Clone)]
pub struct Front<K, R> {
    kv: K,
    router: R,
}

/// Builds [`Front`] around the router ([`tonic::transport::Server::layer`]).
#[derive(Clone)]
pub struct FrontLayer<K> {
    kv: K,
}

impl<K> FrontLayer<K> {
    /// `kv` serves every `/etcdserverpb.KV/` call.
    pub fn new(kv: K) -> Self {
        Self { kv }
    }
}

impl<K: Clone, R> tower::Layer<R> for FrontLayer<K> {
    type Service = Front<K, R>;

    fn layer(&self, router: R) -> Front<K, R> {
        Front {
            kv: self.kv.clone(),
            router,
        }
    }
}

/// The path prefix of the KV service's methods.
const KV_PREFIX: &str = "/etcdserverpb.KV/";

impl<K, R, B, RB, E> Service<http::Request<B>> for Front<K, R>
where
    K: Service<http::Request<B>, Response = http::Response<RB>, Error = E> + Clone + Send + 'static,
    K::Future: Send + 'static,
    R: Service<http::Request<B>, Response = http::Response<RB>, Error = E> + Send,
    R::Future: Send + 'static,
    B: Send + 'static,
    RB: 'static,
    E: 'static,
{
    type Response = http::Response<RB>;
    type Error = E;
    type Future = BoxFuture<'static, Result<http::Response<RB>, E>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), E>> {
        // The KV service is always ready (tonic's generated servers are); the router decides.
        self.router.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let rpc = if grpc {
            metrics::get().rpc(req.uri().path())
        } else {
            None
        };
        let response = if grpc && req.uri().path().starts_with(KV_PREFIX) {
            // Cloned so the call owns it: the router's readiness is what poll_ready reported.
            Either::Left(self.kv.clone().oneshot(req))
        } else {
            Either::Right(self.router.call(req))
        };
        Box::pin(async move {
            let Some(rpc) = rpc else {
                return response.await;
            };
            rpc.started();
            let started = Instant::now();
            let resp = response.await?;
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            rpc.handled(code, started.elapsed());
            Ok(resp)
        })
    }
}
