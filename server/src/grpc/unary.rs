//! KV's unary calls (Range, Put, DeleteRange, Txn, Compact) read, decoded, handled and answered
//! here instead of by tonic's generated `KvServer`, which is kept for the rest (RangeStream, and
//! any call whose request names a `grpc-encoding`).
//!
//! tonic handles a unary call as a stream of one: a decoding stream over the request body, a
//! second pass over the body for its trailers, and an encoding stream for the answer, each with
//! its own buffer and state machine. A unary request body is one message, almost always in one
//! DATA frame: it is read to its end, decoded from that frame, and the answer is encoded into
//! one buffer sent as one DATA frame and the `grpc-status: 0` trailers. Errors are tonic's (same
//! codes and messages), so clients see no difference.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{self, header, HeaderMap, HeaderValue};
use etcd_proto::etcdserverpb::kv_server::{Kv, KvServer};
use http_body::{Body, Frame, SizeHint};
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::NamedService;
use tonic::Status;
use tower::Service;

use super::kv::KvService;

/// The 5 bytes before each gRPC message: a compressed flag and the length.
const PREFIX: usize = 5;
const GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

type Response = http::Response<tonic::body::Body>;

#[derive(Clone, Copy)]
enum KvMethod {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
}

impl KvMethod {
    fn of(path: &str) -> Option<KvMethod> {
        Some(match path.strip_prefix("/etcdserverpb.KV/")? {
            "Range" => KvMethod::Range,
            "Put" => KvMethod::Put,
            "DeleteRange" => KvMethod::DeleteRange,
            "Txn" => KvMethod::Txn,
            "Compact" => KvMethod::Compact,
            _ => return None,
        })
    }
}

/// The KV service: unary calls handled here, everything else by tonic's `KvServer`.
#[derive(Clone)]
pub struct KvCalls {
    kv: Arc<KvService>,
    tonic: KvServer<KvService>,
    max_decoding: usize,
}

impl KvCalls {
    pub fn new(kv: KvService, max_decoding: usize) -> KvCalls {
        let kv = Arc::new(kv);
        let tonic = KvServer::from_arc(kv.clone()).max_decoding_message_size(max_decoding);
        KvCalls {
            kv,
            tonic,
            max_decoding,
        }
    }
}

impl NamedService for KvCalls {
    const NAME: &'static str = <KvServer<KvService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for KvCalls
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = match KvMethod::of(req.uri().path()) {
            // a compressed request: tonic's decoder knows the encodings (and refuses the others)
            Some(m) if !req.headers().contains_key("grpc-encoding") => m,
            _ => return self.tonic.call(req),
        };
        let (kv, limit) = (self.kv.clone(), self.max_decoding);
        Box::pin(async move {
            Ok(match method {
                KvMethod::Range => unary(req, limit, |r| kv.range(r)).await,
                KvMethod::Put => unary(req, limit, |r| kv.put(r)).await,
                KvMethod::DeleteRange => unary(req, limit, |r| kv.delete_range(r)).await,
                KvMethod::Txn => unary(req, limit, |r| kv.txn(r)).await,
                KvMethod::Compact => unary(req, limit, |r| kv.compact(r)).await,
            })
        })
    }
}

/// Reads a unary call's request message, hands it to `handler`, answers with its response or
/// its error status (a trailers-only response, as tonic's).
async fn unary<B, M, R, F, Fut>(req: http::Request<B>, limit: usize, handler: F) -> Response
where
    B: Body<Data = Bytes>,
    B::Error: Into<StdError>,
    M: prost::Message + Default,
    R: prost::Message,
    F: FnOnce(tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, Status>>,
{
    let (parts, body) = req.into_parts();
    let message = match read_message::<B, M>(body, limit).await {
        Ok(m) => m,
        Err(status) => return status.into_http(),
    };
    match handler(tonic::Request::from_http(http::Request::from_parts(
        parts, message,
    )))
    .await
    {
        Ok(resp) => encode_response(resp),
        Err(status) => status.into_http(),
    }
}

/// The request body's message. The body is read to its end (a client's request trailers, which
/// gRPC clients do not send, are ignored); bytes after the first message are read but not kept.
async fn read_message<B, M>(body: B, limit: usize) -> Result<M, Status>
where
    B: Body<Data = Bytes>,
    B::Error: Into<StdError>,
    M: prost::Message + Default,
{
    let mut body = std::pin::pin!(body);
    // The first DATA frame is kept as it came: it usually holds the whole message.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    // The prefix and message length, once the prefix is in (checked once, against the limit).
    let mut want: Option<usize> = None;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(data) = frame.map_err(|e| Status::from_error(e.into()))?.into_data() else {
            continue;
        };
        let have = joined
            .as_ref()
            .map(|j| j.len())
            .or(first.as_ref().map(|f| f.len()))
            .unwrap_or(0);
        if want.is_some_and(|w| have >= w) {
            continue; // the message is in: what follows is drained, not buffered
        }
        let buffered = match (&mut first, &mut joined) {
            (None, _) => {
                first = Some(data);
                first.as_deref().unwrap_or_default()
            }
            (Some(f), None) => {
                let mut j = BytesMut::with_capacity(f.len() + data.len());
                j.put_slice(f);
                j.put_slice(&data);
                &**joined.insert(j)
            }
            (Some(_), Some(j)) => {
                j.put_slice(&data);
                &**j
            }
        };
        // refuse an oversized message before buffering it
        if want.is_none() && buffered.len() >= PREFIX {
            want = Some(PREFIX + check_prefix(&buffered[..PREFIX], limit)?);
        }
    }
    let all: &[u8] = match (&first, &joined) {
        (_, Some(j)) => j,
        (Some(f), None) => f,
        (None, None) => return Err(Status::internal("Missing request message.")),
    };
    let message = want
        .and_then(|w| all.get(PREFIX..w))
        .ok_or_else(|| Status::internal("Unexpected EOF decoding stream."))?;
    M::decode(message).map_err(|e| Status::internal(e.to_string()))
}

/// The message length a prefix announces, or tonic's error for it (no `grpc-encoding` was
/// named, so a compressed message is a protocol error).
fn check_prefix(mut prefix: &[u8], limit: usize) -> Result<usize, Status> {
    match prefix.get_u8() {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ))
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
            )))
        }
    }
    let len = prefix.get_u32() as usize;
    if len > limit {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {limit} bytes"
        )));
    }
    Ok(len)
}

/// A successful answer: the handler's metadata as headers, the message as one DATA frame, then
/// `grpc-status: 0`.
fn encode_response<R: prost::Message>(resp: tonic::Response<R>) -> Response {
    let (metadata, message, extensions) = resp.into_parts();
    let len = message.encoded_len();
    let Ok(len32) = u32::try_from(len) else {
        return Status::resource_exhausted(format!(
            "Error, encoded message length too large: found {len} bytes, the limit is: {} bytes",
            u32::MAX
        ))
        .into_http();
    };
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    buf.put_u8(0);
    buf.put_u32(len32);
    message.encode_raw(&mut buf);
    let mut res = http::Response::new(tonic::body::Body::new(OneMessage {
        data: Some(buf.freeze()),
        ended: false,
    }));
    *res.version_mut() = http::Version::HTTP_2;
    *res.headers_mut() = metadata.into_headers();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    *res.extensions_mut() = extensions;
    res
}

/// A unary answer's body: its one message, then the OK trailers.
struct OneMessage {
    data: Option<Bytes>,
    ended: bool,
}

impl Body for OneMessage {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        self.ended = true;
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::etcdserverpb::PutRequest;
    use http_body_util::{BodyExt, StreamBody};
    use prost::Message;

    fn framed(msg: &impl Message) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
        msg.encode(&mut v).unwrap();
        v
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> impl Body<Data = Bytes, Error = Infallible> {
        StreamBody::new(futures::stream::iter(
            chunks.into_iter().map(|c| Ok(Frame::data(Bytes::from(c)))),
        ))
    }

    fn put() -> PutRequest {
        PutRequest {
            key: b"foo".to_vec(),
            value: vec![7; 300],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_message_is_read_however_its_frames_split_it() {
        let bytes = framed(&put());
        for split in [1, 3, 5, 6, 100, bytes.len()] {
            let chunks: Vec<Vec<u8>> = bytes.chunks(split).map(<[u8]>::to_vec).collect();
            let got: PutRequest = read_message(body_of(chunks), 4096).await.unwrap();
            assert_eq!(got, put(), "split at {split}");
        }
        let mut trailing = framed(&put());
        trailing.extend(vec![9u8; 10_000]);
        let chunks: Vec<Vec<u8>> = trailing.chunks(100).map(<[u8]>::to_vec).collect();
        let got: PutRequest = read_message(body_of(chunks), 4096).await.unwrap();
        assert_eq!(got, put(), "bytes after the message are drained");
    }

    #[tokio::test]
    async fn bad_bodies_get_tonics_errors() {
        let err = read_message::<_, PutRequest>(body_of(vec![]), 4096)
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::Internal, "Missing request message.")
        );
        let mut short = framed(&put());
        short.pop();
        let err = read_message::<_, PutRequest>(body_of(vec![short]), 4096)
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::Internal, "Unexpected EOF decoding stream.")
        );
        let err = read_message::<_, PutRequest>(body_of(vec![framed(&put())]), 100)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        assert!(
            err.message().contains("the limit is: 100 bytes"),
            "{}",
            err.message()
        );
        let mut compressed = framed(&put());
        compressed[0] = 1;
        let err = read_message::<_, PutRequest>(body_of(vec![compressed]), 4096)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
        let err =
            read_message::<_, PutRequest>(body_of(vec![vec![0, 0, 0, 0, 2, 0xff, 0xff]]), 4096)
                .await
                .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn an_answer_is_one_message_then_ok_trailers() {
        let resp = encode_response(tonic::Response::new(put()));
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/grpc");
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes().to_vec(), framed(&put()));
    }
}
