//! A lean unary gRPC caller for the key-value load loops: one HTTP/2 connection (the `h2` crate)
//! shared by the clients that use it, each call a request stream with one message and a response
//! read to its trailers.
//!
//! Why not tonic's `Channel`: on the 2-core benchmark machine the load tool shares the cores with
//! the cluster it measures, so every microsecond it spends per request is taken from the servers.
//! A `Channel` puts each call through a tower buffer (a queue and a worker task) and hyper spawns a
//! task per request to stream its body; with them the tool cost ~38 µs of CPU per put, about a
//! quarter of the machine at full load (docs/benchmarks.md, ninth session). The wire is the same:
//! the gRPC framing (a 5-byte prefix per message, `grpc-status` in the trailers or in a
//! trailers-only response) over plain-text HTTP/2, what every gRPC server accepts.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use prost::Message;
use tonic::{Code, Status};

/// One HTTP/2 connection; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct UnaryConn {
    send: h2::client::SendRequest<Bytes>,
    /// `http://host:port`, the scheme and authority of every request.
    base: String,
    /// The last method called and its URI: a client calls one method, so it parses its URI once.
    last_uri: Option<(&'static str, Uri)>,
}

/// Flow-control windows the connection announces: large, so small responses never wait for a
/// WINDOW_UPDATE round trip.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 24;

impl UnaryConn {
    /// Connects to `uri` (`http://host:port`) and starts the connection's driver task.
    pub async fn connect(uri: &str, timeout: Duration) -> anyhow::Result<Self> {
        let parsed: Uri = uri
            .parse()
            .with_context(|| format!("invalid endpoint {uri:?}"))?;
        if parsed.scheme_str() != Some("http") {
            bail!("{uri}: only plain-text http:// endpoints are supported");
        }
        let authority = parsed
            .authority()
            .with_context(|| format!("{uri}: no host:port"))?
            .to_string();
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&authority))
            .await
            .with_context(|| format!("cannot connect to {uri}: timed out"))?
            .with_context(|| format!("cannot connect to {uri}"))?;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(tcp)
            .await
            .with_context(|| format!("{uri}: HTTP/2 handshake failed"))?;
        tokio::spawn(async move {
            // Ends when every clone is dropped or the connection fails; a failure shows up in the
            // calls that were in flight.
            let _ = conn.await;
        });
        Ok(Self {
            send,
            base: format!("http://{authority}"),
            last_uri: None,
        })
    }

    /// Calls the unary method `path` (`/package.Service/Method`) with `req`.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &'static str,
        req: &Req,
    ) -> Result<Resp, Status> {
        let body = frame(req);
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri(path)?)
            .header("content-type", HeaderValue::from_static("application/grpc"))
            .header("te", HeaderValue::from_static("trailers"))
            .body(())
            .map_err(|e| Status::internal(format!("building the request: {e}")))?;
        let mut send = self.send.clone().ready().await.map_err(h2_status)?;
        let (response, mut stream) = send.send_request(request, false).map_err(h2_status)?;
        stream.send_data(body, true).map_err(h2_status)?;

        let response = response.await.map_err(h2_status)?;
        let (parts, mut body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Status::unknown(format!("HTTP status {}", parts.status)));
        }
        // A trailers-only response (an error) carries grpc-status in the headers.
        if let Some(status) = error_in(&parts.headers) {
            return Err(status);
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2_status)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body
            .trailers()
            .await
            .map_err(h2_status)?
            .unwrap_or_default();
        if let Some(status) = error_in(&trailers) {
            return Err(status);
        }
        if !trailers.contains_key("grpc-status") && !parts.headers.contains_key("grpc-status") {
            return Err(Status::internal("response without grpc-status"));
        }
        unframe(&data)
    }
}

impl UnaryConn {
    fn uri(&mut self, path: &'static str) -> Result<Uri, Status> {
        if let Some((last, uri)) = &self.last_uri
            && *last == path
        {
            return Ok(uri.clone());
        }
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| Status::internal(format!("method {path}: {e}")))?;
        self.last_uri = Some((path, uri.clone()));
        Ok(uri)
    }
}

/// One gRPC message: uncompressed flag, 4-byte big-endian length, the encoded message.
fn frame<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Cannot fail: the buffer was sized for the message.
    let _ = msg.encode(&mut buf);
    buf.freeze()
}

/// The single message of a unary response.
fn unframe<M: Message + Default>(data: &[u8]) -> Result<M, Status> {
    let Some((&[flag, a, b, c, d], rest)) = data.split_first_chunk::<5>() else {
        return Err(Status::internal(format!(
            "response body of {} bytes: no gRPC message",
            data.len()
        )));
    };
    if flag != 0 {
        return Err(Status::unimplemented(
            "compressed responses are not supported",
        ));
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if rest.len() != len {
        return Err(Status::internal(format!(
            "gRPC message of {len} bytes announced, {} received",
            rest.len()
        )));
    }
    M::decode(rest).map_err(|e| Status::internal(format!("decoding the response: {e}")))
}

/// The error a `grpc-status` header or trailer reports, if it is not OK.
fn error_in(headers: &HeaderMap) -> Option<Status> {
    Status::from_header_map(headers).filter(|s| s.code() != Code::Ok)
}

/// A transport failure: the outcome of the call is unknown, as for tonic's transport errors.
fn h2_status(e: h2::Error) -> Status {
    Status::unavailable(format!("HTTP/2: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_proto::etcdserverpb::{PutRequest, RangeResponse, ResponseHeader};

    #[test]
    fn frames_round_trip() {
        let req = PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 300],
            ..Default::default()
        };
        let framed = frame(&req);
        assert_eq!(framed[0], 0);
        assert_eq!(
            u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize,
            framed.len() - 5
        );
        let back: PutRequest = unframe(&framed).expect("decodes");
        assert_eq!(back, req);
    }

    #[test]
    fn bad_bodies_are_errors() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            count: 1,
            ..Default::default()
        };
        let framed = frame(&resp);
        assert!(unframe::<RangeResponse>(&framed[..3]).is_err());
        assert!(unframe::<RangeResponse>(&framed[..framed.len() - 1]).is_err());
        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        assert_eq!(
            unframe::<RangeResponse>(&compressed).unwrap_err().code(),
            Code::Unimplemented
        );
    }

    #[test]
    fn grpc_status_headers() {
        let mut h = HeaderMap::new();
        assert!(error_in(&h).is_none());
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(error_in(&h).is_none());
        h.insert("grpc-status", HeaderValue::from_static("3"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver: key is not provided"),
        );
        let s = error_in(&h).expect("an error");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: key is not provided");
    }
}
