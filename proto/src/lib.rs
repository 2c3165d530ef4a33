//! Generated protobuf messages and gRPC services: the etcd v3 API (wire-identical to etcd's), the
//! peer protocol between members, and the internal raft command format. Nothing here is hand-written
//! logic; the module tree mirrors the protobuf packages so cross-package references resolve.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

pub mod conclave {
    /// Conclave's public extension to the etcd API.
    pub mod v1 {
        tonic::include_proto!("conclave.v1");
    }
    pub mod peer {
        pub mod v1 {
            tonic::include_proto!("conclave.peer.v1");
        }
    }
    pub mod internal {
        pub mod v1 {
            tonic::include_proto!("conclave.internal.v1");
        }
    }
}
