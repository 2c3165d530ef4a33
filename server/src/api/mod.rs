//! gRPC services: one file per service. They validate, translate and wait — no business logic:
//! writes go to `Node::propose`, reads to `kv_ops` after `Node::read_barrier`, and every error
//! leaves through the one table in `status`.

pub mod cluster;
pub mod election;
pub mod kv;
pub mod leader;
pub mod lease;
pub mod lock;
pub mod loopback;
pub mod maintenance;
pub mod membership;
pub mod peer;
pub mod status;
pub mod validate;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conclave_proto::etcdserverpb::ResponseHeader;

use crate::alarm::{self, Alarms};
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::Store;
use crate::node::Node;
use crate::watch::WatchHub;

/// Request limits (etcd's flags and defaults).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// `--quota-backend-bytes`: the most history stored before NOSPACE.
    pub quota_bytes: u64,
}

/// What every service needs of the member.
pub struct Context {
    pub node: Arc<Node>,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub membership: Arc<Membership>,
    pub alarms: Arc<Alarms>,
    pub limits: Limits,
    pub data_dir: PathBuf,
    /// How long a request may wait for raft before answering "timed out".
    pub request_timeout: Duration,
}

impl Context {
    /// A full response header; `revision` 0 means the store's newest revision.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.node.cluster_id,
            member_id: self.node.member_id,
            revision: if revision > 0 {
                revision
            } else {
                self.store.revision()
            },
            raft_term: self.node.status().term,
        }
    }

    /// Refuses what a learner does not serve (etcd: only serializable reads, status and the
    /// member list).
    pub fn refuse_learner(&self) -> Result<(), tonic::Status> {
        if self.membership.is_learner(self.node.member_id) {
            return Err(crate::error::ServerError::NotSupportedForLearner.into());
        }
        Ok(())
    }

    /// The member's database.
    pub fn store_db(&self) -> Arc<redb::Database> {
        self.store.db()
    }

    /// Refuses writes while a CORRUPT alarm is raised (as etcd: "corrupt cluster").
    pub fn refuse_if_corrupt(&self) -> Result<(), tonic::Status> {
        use conclave_proto::etcdserverpb::AlarmType;
        if self.alarms.has(AlarmType::Corrupt) {
            return Err(crate::error::ServerError::Corrupt.into());
        }
        Ok(())
    }

    /// Refuses a write that adds `incoming` bytes of data while NOSPACE is raised, or that would
    /// take the history over the quota (and raises NOSPACE then, as etcd does).
    pub async fn check_space(&self, incoming: usize) -> Result<(), tonic::Status> {
        let quota = alarm::Quota {
            bytes: self.limits.quota_bytes,
            max_request_bytes: self.limits.max_request_bytes,
        };
        Ok(alarm::admit(&self.node, &self.store, &self.alarms, quota, incoming).await?)
    }

    /// A fresh lease id for a grant that left it to the server: positive, not in use.
    pub fn new_lease_id(&self) -> i64 {
        loop {
            let id = rand::random::<i64>() & i64::MAX;
            if id != 0 && !self.lessor.exists(id) {
                return id;
            }
        }
    }

    /// Completes a header that carries only a revision (as `kv_ops` and apply produce them).
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }
}

/// A gRPC service whose requests are handled on `runtime` rather than on the runtime serving the
/// connection: the peer port is served by the raft thread (raft messages reach raft without a
/// thread switch), but requests forwarded by followers (leases, membership) do their work on the
/// main runtime, where they cannot hold up raft.
/// The peer port is not drained with the client port at shutdown (its raft streams never end), so
/// the requests it handles are counted in `in_flight`, which a stopping member waits for before it
/// stops raft.
#[derive(Clone)]
pub struct OnRuntime<S> {
    inner: S,
    runtime: tokio::runtime::Handle,
    in_flight: InFlight,
}

impl<S> OnRuntime<S> {
    pub fn new(inner: S, runtime: tokio::runtime::Handle, in_flight: InFlight) -> Self {
        OnRuntime {
            inner,
            runtime,
            in_flight,
        }
    }
}

/// Counts requests being handled; [`InFlight::idle`] waits until there are none.
#[derive(Clone, Default)]
pub struct InFlight(Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>);

/// One request counted by [`InFlight`], until dropped.
pub struct Counted(InFlight);

impl InFlight {
    pub fn enter(&self) -> Counted {
        self.0.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Counted(self.clone())
    }

    pub fn count(&self) -> usize {
        self.0.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Returns once no request is being handled.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.0.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.0.0.1.notify_waiters();
        }
    }
}

type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for OnRuntime<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = HttpResponse,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<HttpResponse, std::convert::Infallible>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let counted = self.in_flight.enter();
        let answer = self.inner.call(req);
        let call = self.runtime.spawn(async move {
            let answer = answer.await;
            drop(counted);
            answer
        });
        Box::pin(async move {
            match call.await {
                Ok(answer) => answer,
                Err(e) => Ok(tonic::Status::internal(format!("conclave: {e}")).into_http()),
            }
        })
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for OnRuntime<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::Service as _;
    use tonic::codegen::http;

    /// Answers with the name of the thread that handled the request.
    #[derive(Clone)]
    struct WhereAmI;

    impl tonic::codegen::Service<http::Request<()>> for WhereAmI {
        type Response = HttpResponse;
        type Error = std::convert::Infallible;
        type Future = tonic::codegen::BoxFuture<HttpResponse, std::convert::Infallible>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(async {
                let name = std::thread::current().name().unwrap_or("").to_string();
                Ok(http::Response::builder()
                    .header("x-thread", name)
                    .body(tonic::body::Body::empty())
                    .expect("a valid response"))
            })
        }
    }

    #[test]
    fn requests_are_handled_on_the_given_runtime() {
        let target = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("target-runtime")
            .enable_all()
            .build()
            .unwrap();
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let in_flight = InFlight::default();
        let mut service = OnRuntime::new(WhereAmI, target.handle().clone(), in_flight.clone());
        let answer = caller
            .block_on(service.call(http::Request::new(())))
            .unwrap();
        assert_eq!(answer.headers()["x-thread"], "target-runtime");
        assert_eq!(in_flight.count(), 0);
        // Unwrapped, the same service runs where it is called.
        let answer = caller
            .block_on(WhereAmI.call(http::Request::new(())))
            .unwrap();
        assert_ne!(answer.headers()["x-thread"], "target-runtime");
    }

    #[tokio::test]
    async fn idle_waits_for_every_counted_request() {
        let in_flight = InFlight::default();
        in_flight.idle().await;
        let first = in_flight.enter();
        let second = in_flight.enter();
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.idle().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one request is still being handled");
        drop(second);
        waiter.await.unwrap();
        assert_eq!(in_flight.count(), 0);
    }
}
