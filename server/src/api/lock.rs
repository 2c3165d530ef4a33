//! v3lockpb.Lock, as etcd serves it: the server runs the client-side lock recipe
//! (`conclave_client::Mutex`) against itself ([`Loopback`]), so a lock taken here and one taken by
//! a client recipe on the same name exclude each other.
//!
//! Contract: Lock(name, lease) waits (no deadline but the caller's) until the lock is held and
//! answers the lock key, `<name>/<lease in hex>`, which exists exactly as long as the lock is held;
//! its create revision is the fencing token. The lease is the caller's to keep alive; without one
//! (0) a lease of 60 s is granted for the request, as etcd does. A lease that
//! does not exist answers "etcdserver: requested lease not found"; one that ends while waiting
//! answers "session expired" (etcd's text). A caller that gives up (cancels) leaves no key behind.
//! Unlock(key) deletes the key.

use std::sync::Arc;

use conclave_client::{DeleteOptions, Mutex};
use conclave_proto::v3lockpb::lock_server::Lock;
use conclave_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use super::loopback::Loopback;
use super::status::from_client;

pub struct LockService {
    loopback: Arc<Loopback>,
}

impl LockService {
    pub fn new(loopback: Arc<Loopback>) -> Self {
        LockService { loopback }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let req = req.into_inner();
        let client = self.loopback.client().await?;
        let lease = self.loopback.lease_or_new(req.lease).await?;
        let held = Mutex::with_lease(client, req.name, lease)
            .lock()
            .await
            .map_err(from_client)?;
        Ok(Response::new(LockResponse {
            header: held.header().cloned(),
            key: held.key().to_vec(),
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let req = req.into_inner();
        let client = self.loopback.client().await?;
        let deleted = client
            .kv()
            .delete(req.key, DeleteOptions::new())
            .await
            .map_err(from_client)?;
        Ok(Response::new(UnlockResponse {
            header: deleted.header,
        }))
    }
}
