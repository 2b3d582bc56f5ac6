//! Frames on the wire: a 4-byte big-endian size, then a header, then the body. The codec of
//! every header and body is the `kafka-protocol` crate's; this file only cuts frames and
//! puts them together.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Kafka's own default for `socket.request.max.bytes`.
pub(crate) const MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;
/// Before SASL has succeeded, as Kafka's `sasl.server.max.receive.size`: an unauthenticated
/// peer cannot make the gateway reserve more.
pub(crate) const MAX_UNAUTHENTICATED_FRAME_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size} bytes is larger than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
}

impl WireError {
    pub(crate) fn malformed(what: &'static str, why: impl std::fmt::Display) -> Self {
        WireError::Malformed {
            what,
            why: why.to_string(),
        }
    }
}

/// Reads one frame's payload (without its size prefix), of at most `limit` bytes; `None` at a
/// clean end of stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Bytes>, WireError> {
    let mut size = [0u8; 4];
    match reader.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size).map_err(|_| WireError::malformed("frame", "negative size"))?;
    if size > limit {
        return Err(WireError::TooLarge { size, limit });
    }
    let mut payload = BytesMut::zeroed(size);
    reader.read_exact(&mut payload).await?;
    Ok(Some(payload.freeze()))
}

/// A client's request: its header decoded, its body still bytes.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// `None` for an API key this crate does not know (answered with an error, never forwarded).
    pub api: Option<ApiKey>,
    pub header: RequestHeader,
    /// The body alone.
    pub body: Bytes,
    /// The whole frame payload (header and body), to forward unchanged.
    pub payload: Bytes,
}

impl Request {
    /// Cuts the header off a frame payload. Only the header is decoded here.
    pub(crate) fn parse(payload: Bytes) -> Result<Request, WireError> {
        if payload.len() < 8 {
            return Err(WireError::malformed(
                "request header",
                "shorter than 8 bytes",
            ));
        }
        let key = (&payload[0..2]).get_i16();
        let version = (&payload[2..4]).get_i16();
        let correlation_id = (&payload[4..8]).get_i32();
        let api = ApiKey::try_from(key).ok();
        let mut buf = payload.clone();
        let header = match api {
            Some(api) => {
                let header_version = api.request_header_version(version);
                RequestHeader::decode(&mut buf, header_version)
                    .map_err(|e| WireError::malformed("request header", e))?
            }
            None => {
                let mut header = RequestHeader::default();
                header.request_api_key = key;
                header.request_api_version = version;
                header.correlation_id = correlation_id;
                buf.advance(8);
                header
            }
        };
        Ok(Request {
            api,
            header,
            body: buf,
            payload,
        })
    }

    pub(crate) fn version(&self) -> i16 {
        self.header.request_api_version
    }

    /// Decodes the body as `T` at the request's version.
    pub(crate) fn decode<T: Decodable>(&self, what: &'static str) -> Result<T, WireError> {
        let mut body = self.body.clone();
        T::decode(&mut body, self.version()).map_err(|e| WireError::malformed(what, e))
    }

    /// The same request with a new body (header unchanged, so the correlation id stays).
    pub(crate) fn with_body<T: Encodable>(&self, body: &T) -> Result<Bytes, WireError> {
        let api = self
            .api
            .ok_or_else(|| WireError::malformed("request", "unknown API key"))?;
        let mut buf = BytesMut::new();
        self.header
            .encode(&mut buf, api.request_header_version(self.version()))
            .map_err(|e| WireError::malformed("request header", e))?;
        body.encode(&mut buf, self.version())
            .map_err(|e| WireError::malformed("request body", e))?;
        Ok(buf.freeze())
    }

    /// A response to this request: header (the client's correlation id) and `body`.
    pub(crate) fn respond<T: Encodable>(&self, body: &T) -> Result<Bytes, WireError> {
        let api = self
            .api
            .ok_or_else(|| WireError::malformed("request", "unknown API key"))?;
        respond_as(api, self.version(), self.header.correlation_id, body)
    }

    /// Splits an upstream response to this request into its header and its decoded body.
    pub(crate) fn decode_response<T: Decodable>(
        &self,
        payload: Bytes,
    ) -> Result<(ResponseHeader, T), WireError> {
        let api = self
            .api
            .ok_or_else(|| WireError::malformed("request", "unknown API key"))?;
        let mut buf = payload;
        let header = ResponseHeader::decode(&mut buf, api.response_header_version(self.version()))
            .map_err(|e| WireError::malformed("response header", e))?;
        let body =
            T::decode(&mut buf, self.version()).map_err(|e| WireError::malformed("response", e))?;
        Ok((header, body))
    }

    /// Encodes a response to this request with `header` (as the broker sent it) and `body`.
    pub(crate) fn encode_response<T: Encodable>(
        &self,
        header: &ResponseHeader,
        body: &T,
    ) -> Result<Bytes, WireError> {
        let api = self
            .api
            .ok_or_else(|| WireError::malformed("request", "unknown API key"))?;
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, api.response_header_version(self.version()))
            .map_err(|e| WireError::malformed("response header", e))?;
        body.encode(&mut buf, self.version())
            .map_err(|e| WireError::malformed("response", e))?;
        Ok(buf.freeze())
    }
}

/// A response payload (header and body, no size prefix) for `api` at `version`.
pub(crate) fn respond_as<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, WireError> {
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api.response_header_version(version))
        .map_err(|e| WireError::malformed("response header", e))?;
    body.encode(&mut buf, version)
        .map_err(|e| WireError::malformed("response", e))?;
    Ok(buf.freeze())
}

/// A request payload (header and body) that the gateway itself sends upstream.
pub(crate) fn request_payload<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, WireError> {
    let mut header = RequestHeader::default();
    header.request_api_key = api as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(kafka_protocol::protocol::StrBytes::from_static_str(
        "kafflow",
    ));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api.request_header_version(version))
        .map_err(|e| WireError::malformed("request header", e))?;
    body.encode(&mut buf, version)
        .map_err(|e| WireError::malformed("request", e))?;
    Ok(buf.freeze())
}

/// Writes a payload with its size in front, without copying the payload (one vectored write
/// where the socket allows it).
pub(crate) async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    payload: &Bytes,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let size = Bytes::copy_from_slice(&(payload.len() as i32).to_be_bytes());
    let mut frame = size.chain(payload.clone());
    writer.write_all_buf(&mut frame).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;

    #[test]
    fn a_request_round_trips_through_parse_and_with_body() {
        let body = MetadataRequest::default();
        let payload = request_payload(ApiKey::Metadata, 12, 42, &body).expect("encode");
        let request = Request::parse(payload.clone()).expect("parse");
        assert_eq!(request.api, Some(ApiKey::Metadata));
        assert_eq!(request.header.correlation_id, 42);
        let decoded: MetadataRequest = request.decode("metadata").expect("decode");
        assert_eq!(decoded, body);
        assert_eq!(request.with_body(&decoded).expect("re-encode"), payload);
    }

    #[test]
    fn short_and_unknown_frames_are_errors_or_unknown() {
        assert!(Request::parse(Bytes::from_static(&[0, 1, 2])).is_err());
        let unknown = Request::parse(Bytes::from_static(&[0x7f, 0x7f, 0, 1, 0, 0, 0, 9]))
            .expect("an unknown key still has a header");
        assert_eq!(unknown.api, None);
        assert_eq!(unknown.header.correlation_id, 9);
    }
}
