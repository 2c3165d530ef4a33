//! etcdserverpb.Watch: each client stream is served by the watch hub (see `watch`), from this
//! member's applied state — any member serves watches, leader or not.

use std::sync::Arc;

use conclave_proto::etcdserverpb::WatchRequest;
use conclave_proto::etcdserverpb::watch_server::Watch;
use tonic::{Request, Response, Status, Streaming};

use crate::watch::WatchHub;
use crate::watch::stream::{self, ResponseStream};

pub struct WatchService {
    hub: Arc<WatchHub>,
}

impl WatchService {
    pub fn new(hub: Arc<WatchHub>) -> Self {
        WatchService { hub }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(stream::serve(
            self.hub.clone(),
            req.into_inner(),
        )))
    }
}
