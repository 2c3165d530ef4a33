//! Runs a gRPC service's requests on another tokio runtime than the one serving the connection.
//!
//! The peer port is served by the raft thread (raft messages reach raft without a thread switch),
//! but the requests followers forward to the leader there (leases, membership) do their work on
//! the main runtime, where they cannot hold up raft. They are counted ([`InFlight`]) because the
//! peer port is not drained with the client port at shutdown: a stopping member waits for them
//! before it stops raft.

use std::sync::Arc;

/// A gRPC service whose requests are handled on `runtime`, each counted in `in_flight` until
/// answered.
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
