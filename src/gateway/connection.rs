//! One client connection: frames in, answers out in the order of the requests, SASL first.
//!
//! Kafka clients pipeline requests on a connection and expect the answers in order. Each
//! request becomes a `Reply` queued to the writer at once; the writer waits for each in turn.
//! A forwarded request is written upstream before the next one is read, so the broker sees
//! them in the client's order too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::upstream::{Answer, Upstream, UpstreamError};
use super::versions::Versions;
use super::wire::{
    read_frame, respond_as, write_frame, Request, WireError, MAX_FRAME_BYTES,
    MAX_UNAUTHENTICATED_FRAME_BYTES,
};
use super::{Shared, Target};
use crate::identity::{Credential, Door, Principal};
use crate::metrics::METRICS;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused authentication waits before its connection is closed.
const FAILED_AUTHENTICATION_DELAY: Duration = Duration::from_millis(100);
/// From the connection's start to a successful SaslAuthenticate.
const SASL_TIMEOUT: Duration = Duration::from_secs(30);
/// Answers waiting to be written; past this the connection stops reading (backpressure).
const IN_FLIGHT: usize = 128;

const UNSUPPORTED_VERSION: i16 = 35;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// An answer in the making, in the queue of the connection's writer.
pub(crate) enum Reply {
    /// Ready to write.
    Now(Bytes),
    /// The broker's answer, written as it comes.
    Forwarded(Answer),
    /// Worked out by a task that has already started its work (an actor message is sent, a
    /// request is written upstream); the writer only waits for it.
    Later(BoxFuture<'static, Result<Bytes, Fault>>),
    /// Nothing to write: a Produce with `acks=0`.
    Nothing,
}

/// Why a connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fault {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Refused(String),
}

struct Queued {
    reply: Reply,
    api: &'static str,
    correlation: i32,
    started: Instant,
    /// Close the connection once this answer is written (a failed SASL authentication).
    close_after: bool,
}

/// Who is on the other end, as SASL left it.
enum Auth {
    Start,
    /// A mechanism was chosen with SaslHandshake v1 or later: SaslAuthenticate requests follow.
    Mechanism(Mechanism),
    /// A mechanism was chosen with SaslHandshake v0: the next frame is the client's bare SASL
    /// token, without a Kafka request header (as Kafka before KIP-152), and the answer is the
    /// bare server token.
    Unframed(Mechanism),
    Done(Session),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    Plain,
    OAuthBearer,
}

/// A signed-in connection.
pub(crate) struct Session {
    pub principal: Principal,
    credential: Credential,
}

/// What one connection knows while it lives.
pub(crate) struct Connection {
    pub(crate) shared: Arc<Shared>,
    peer: SocketAddr,
    target: Target,
    upstream: Option<Arc<Upstream>>,
    /// Which of the target's upstream addresses to try next after a failure.
    next_upstream: usize,
    /// Topics this connection sent held records to: its later batches follow the same way.
    pub(crate) held_topics: std::collections::HashSet<String>,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    target: Target,
) {
    let guard = shared.guard();
    let open = Arc::clone(&shared.open);
    METRICS.gateway_connections.inc();
    METRICS.gateway_connections_opened.inc();
    match shared.tls.clone() {
        None => run(shared, stream, peer, target).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => run(shared, stream, peer, target).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed on the gateway.");
                    METRICS.tls_handshake_failures.inc();
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out on the gateway.");
                    METRICS.tls_handshake_failures.inc();
                }
            }
        }
    }
    METRICS.gateway_connections.dec();
    drop(open);
    drop(guard);
}

async fn run<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr, target: Target)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (queue, replies) = mpsc::channel::<Queued>(IN_FLIGHT);
    let writing = tokio::spawn(write_loop(writer, replies, peer));
    let mut connection = Connection {
        shared: Arc::clone(&shared),
        peer,
        target,
        upstream: None,
        next_upstream: 0,
        held_topics: Default::default(),
    };
    let mut auth = Auth::Start;
    let mut shutdown = shared.shutdown.clone();
    let mut revoked: BoxFuture<'static, ()> = Box::pin(std::future::pending());
    let sasl_deadline = tokio::time::sleep(SASL_TIMEOUT);
    tokio::pin!(sasl_deadline);
    let ended = loop {
        let signed_in = matches!(auth, Auth::Done(_));
        let limit = if signed_in {
            MAX_FRAME_BYTES
        } else {
            MAX_UNAUTHENTICATED_FRAME_BYTES
        };
        let frame = tokio::select! {
            frame = read_frame(&mut reader, limit) => frame,
            _ = shutdown.recv() => break "shutdown".to_string(),
            _ = &mut revoked => break "token revoked".to_string(),
            _ = &mut sasl_deadline, if !signed_in => break "no SASL authentication in time".to_string(),
        };
        let payload = match frame {
            Ok(Some(payload)) => payload,
            Ok(None) => break "closed by client".to_string(),
            Err(e) => break e.to_string(),
        };
        METRICS.gateway_bytes_in.inc_by(payload.len() as u64 + 4);
        let started = Instant::now();
        if let Auth::Unframed(mechanism) = auth {
            let (step, close_after) = match connection.sign_in(mechanism, &payload).await {
                Ok(session) => {
                    let credential = session.credential;
                    auth = Auth::Done(session);
                    revoked = shared.rules.revoked(credential);
                    // PLAIN and OAUTHBEARER end with an empty server token.
                    (Reply::Now(Bytes::new()), false)
                }
                // As a broker does after a v0 handshake: no error answer exists, the
                // connection is closed.
                Err(_) => (Reply::Nothing, true),
            };
            let queued = Queued {
                reply: step,
                api: "sasl_authenticate",
                correlation: -1,
                started,
                close_after,
            };
            if queue.send(queued).await.is_err() || close_after {
                break "closed".to_string();
            }
            continue;
        }
        let request = match Request::parse(payload) {
            Ok(request) => request,
            Err(e) => break e.to_string(),
        };
        let api = request.api.map_or("unknown", api_name);
        let correlation = request.header.correlation_id;
        tracing::trace!(%peer, api, version = request.version(), correlation, "Gateway request.");
        let (reply, close_after) = match connection.handle(&mut auth, request).await {
            Ok(Step::Reply(reply)) => (reply, false),
            Ok(Step::ReplyAndClose(reply)) => (reply, true),
            Ok(Step::SignedIn(reply, credential)) => {
                revoked = shared.rules.revoked(credential);
                (reply, false)
            }
            Err(e) => break e.to_string(),
        };
        let queued = Queued {
            reply,
            api,
            correlation,
            started,
            close_after,
        };
        if queue.send(queued).await.is_err() || close_after {
            break "closed".to_string();
        }
    };
    tracing::debug!(%peer, why = %ended, "Gateway connection ended.");
    // The writer answers what was read, then ends.
    drop(queue);
    let _ = writing.await;
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: tokio::io::WriteHalf<W>,
    mut replies: mpsc::Receiver<Queued>,
    peer: SocketAddr,
) {
    while let Some(queued) = replies.recv().await {
        let payload = match queued.reply {
            Reply::Now(bytes) => Ok(Some(bytes)),
            Reply::Nothing => Ok(None),
            Reply::Forwarded(answer) => match answer.await {
                Ok(Ok(bytes)) => Ok(Some(bytes)),
                Ok(Err(e)) => Err(Fault::Upstream(e)),
                Err(_) => Err(Fault::Refused("upstream answer lost".into())),
            },
            Reply::Later(work) => work.await.map(Some),
        };
        let payload = match payload {
            Ok(payload) => payload,
            Err(e) => {
                // The client would wait for an answer that cannot come: close, and it retries.
                tracing::debug!(%peer, api = queued.api, error = %e, "Gateway answer failed; closing.");
                break;
            }
        };
        tracing::trace!(
            %peer,
            api = queued.api,
            correlation = queued.correlation,
            bytes = payload.as_ref().map_or(0, Bytes::len),
            "Gateway answer."
        );
        if let Some(payload) = payload {
            METRICS.gateway_bytes_out.inc_by(payload.len() as u64 + 4);
            if write_frame(&mut writer, &payload).await.is_err() {
                break;
            }
        }
        METRICS
            .gateway_requests
            .with_label_values(&[queued.api])
            .inc();
        METRICS
            .gateway_latency
            .with_label_values(&[queued.api])
            .observe(queued.started.elapsed().as_secs_f64());
        if queued.close_after {
            // As Kafka's `connection.failed.authentication.delay.ms`: the refusal reaches the
            // client before the close does, and a guessing client is slowed down.
            let _ = writer.flush().await;
            tokio::time::sleep(FAILED_AUTHENTICATION_DELAY).await;
            break;
        }
    }
    let _ = writer.shutdown().await;
}

/// What a request led to.
pub(crate) enum Step {
    Reply(Reply),
    /// Answer, then close (a failed authentication).
    ReplyAndClose(Reply),
    /// Authenticated: answer, and close when the credential is revoked.
    SignedIn(Reply, Credential),
}

impl Connection {
    async fn handle(&mut self, auth: &mut Auth, request: Request) -> Result<Step, Fault> {
        let Some(api) = request.api else {
            return Err(Fault::Refused(format!(
                "unknown API key {}",
                request.header.request_api_key
            )));
        };
        if api == ApiKey::ApiVersions {
            return Ok(Step::Reply(self.api_versions(&request).await?));
        }
        let versions = self.versions().await?;
        if !versions.offers(api, request.version()) {
            return Err(Fault::Refused(format!(
                "{} v{} is not offered",
                api_name(api),
                request.version()
            )));
        }
        match auth {
            Auth::Start => match api {
                ApiKey::SaslHandshake => {
                    let (reply, mechanism) = self.sasl_handshake(&request)?;
                    if let Some(mechanism) = mechanism {
                        *auth = if request.version() == 0 {
                            Auth::Unframed(mechanism)
                        } else {
                            Auth::Mechanism(mechanism)
                        };
                    }
                    Ok(Step::Reply(reply))
                }
                // As a broker's SASL listener does: anything else first is a protocol error.
                _ => Err(Fault::Refused(format!(
                    "{} before SASL authentication",
                    api_name(api)
                ))),
            },
            Auth::Mechanism(mechanism) => match api {
                ApiKey::SaslAuthenticate => {
                    let mechanism = *mechanism;
                    match self.sasl_authenticate(&request, mechanism).await? {
                        Ok((reply, session)) => {
                            let credential = session.credential;
                            *auth = Auth::Done(session);
                            Ok(Step::SignedIn(Reply::Now(reply), credential))
                        }
                        Err(reply) => Ok(Step::ReplyAndClose(Reply::Now(reply))),
                    }
                }
                _ => Err(Fault::Refused(format!(
                    "{} before SASL authentication",
                    api_name(api)
                ))),
            },
            // Read as a bare token by the loop, never parsed as a request.
            Auth::Unframed(_) => Err(Fault::Refused("a request instead of a SASL token".into())),
            Auth::Done(session) => {
                let principal = session.principal.clone();
                self.dispatch(api, &principal, request)
                    .await
                    .map(Step::Reply)
            }
        }
    }

    async fn dispatch(
        &mut self,
        api: ApiKey,
        principal: &Principal,
        request: Request,
    ) -> Result<Reply, Fault> {
        match api {
            ApiKey::SaslHandshake | ApiKey::SaslAuthenticate => {
                let mut body = SaslHandshakeResponse::default();
                body.error_code = ILLEGAL_SASL_STATE;
                if api == ApiKey::SaslHandshake {
                    Ok(Reply::Now(request.respond(&body)?))
                } else {
                    let mut body = SaslAuthenticateResponse::default();
                    body.error_code = ILLEGAL_SASL_STATE;
                    body.error_message = Some(StrBytes::from_static_str("already authenticated"));
                    Ok(Reply::Now(request.respond(&body)?))
                }
            }
            ApiKey::Metadata => super::metadata::metadata(self, principal, request).await,
            ApiKey::FindCoordinator => {
                super::metadata::find_coordinator(self, principal, request).await
            }
            ApiKey::DescribeCluster => super::metadata::describe_cluster(self, request).await,
            ApiKey::Produce => super::produce::produce(self, principal, request).await,
            ApiKey::InitProducerId => super::produce::init_producer_id(self, request).await,
            ApiKey::Fetch => super::groups::fetch(self, principal, request).await,
            ApiKey::ListOffsets => super::groups::list_offsets(self, principal, request).await,
            ApiKey::OffsetForLeaderEpoch => {
                super::groups::offset_for_leader_epoch(self, principal, request).await
            }
            ApiKey::JoinGroup
            | ApiKey::SyncGroup
            | ApiKey::Heartbeat
            | ApiKey::LeaveGroup
            | ApiKey::DescribeGroups
            | ApiKey::OffsetCommit
            | ApiKey::OffsetFetch
            | ApiKey::ListGroups
            | ApiKey::ConsumerGroupHeartbeat => {
                super::groups::group(self, api, principal, request).await
            }
            ApiKey::CreateTopics => super::admin::create_topics(self, principal, request),
            ApiKey::DeleteTopics => super::admin::delete_topics(self, principal, request),
            ApiKey::DescribeConfigs => {
                super::admin::describe_configs(self, principal, request).await
            }
            other => super::admin::refuse(other, request),
        }
    }

    /// ApiVersions: answered by the gateway, before or after authentication. A version newer
    /// than the gateway's gets the v0 answer with UNSUPPORTED_VERSION and the gateway's ranges,
    /// so the client retries with one both know (KIP-511).
    async fn api_versions(&mut self, request: &Request) -> Result<Reply, Fault> {
        let versions = self.versions().await?;
        let mut body = ApiVersionsResponse::default();
        body.api_keys = versions.api_keys();
        let offered = versions.offers(ApiKey::ApiVersions, request.version());
        let version = if offered {
            request.version()
        } else {
            body.error_code = UNSUPPORTED_VERSION;
            0
        };
        Ok(Reply::Now(respond_as(
            ApiKey::ApiVersions,
            version,
            request.header.correlation_id,
            &body,
        )?))
    }

    fn sasl_handshake(&self, request: &Request) -> Result<(Reply, Option<Mechanism>), Fault> {
        let asked: SaslHandshakeRequest = request.decode("SaslHandshake")?;
        let mechanism = match asked.mechanism.as_str() {
            "PLAIN" => Some(Mechanism::Plain),
            "OAUTHBEARER" => Some(Mechanism::OAuthBearer),
            _ => None,
        };
        let mut body = SaslHandshakeResponse::default();
        body.mechanisms = vec![
            StrBytes::from_static_str("PLAIN"),
            StrBytes::from_static_str("OAUTHBEARER"),
        ];
        if mechanism.is_none() {
            body.error_code = UNSUPPORTED_SASL_MECHANISM;
        }
        Ok((Reply::Now(request.respond(&body)?), mechanism))
    }

    /// Checks the credentials: `Ok(Ok(..))` signed in, `Ok(Err(answer))` refused (the answer
    /// is written and the connection closed, as Kafka does).
    async fn sasl_authenticate(
        &self,
        request: &Request,
        mechanism: Mechanism,
    ) -> Result<Result<(Bytes, Session), Bytes>, Fault> {
        let asked: SaslAuthenticateRequest = request.decode("SaslAuthenticate")?;
        let mut body = SaslAuthenticateResponse::default();
        match self.sign_in(mechanism, &asked.auth_bytes).await {
            Ok(session) => Ok(Ok((request.respond(&body)?, session))),
            Err(why) => {
                body.error_code = SASL_AUTHENTICATION_FAILED;
                body.error_message = Some(StrBytes::from_string(format!(
                    "Authentication failed: {why}"
                )));
                Ok(Err(request.respond(&body)?))
            }
        }
    }

    /// Checks a client's SASL token, whether it came in a SaslAuthenticate request or bare
    /// after a v0 handshake: the session, or why not (counted and logged here).
    async fn sign_in(&self, mechanism: Mechanism, token: &[u8]) -> Result<Session, String> {
        let failures = self.shared.rules.identity.failures();
        let outcome = match failures.admit(self.peer.ip(), Door::Kafka) {
            Err(e) => Err(e.to_string()),
            Ok(()) => match credentials(mechanism, token) {
                Err(why) => Err(why),
                Ok((user, token)) => match self.shared.rules.identity.sign_in(&token).await {
                    Ok(signed) if user.as_deref().is_none_or(|u| u == signed.principal.name) => {
                        Ok(Session {
                            principal: signed.principal,
                            credential: signed.credential,
                        })
                    }
                    Ok(signed) => {
                        failures.failed(self.peer.ip(), Door::Kafka);
                        Err(format!(
                            "the token is {}'s, not {}'s",
                            signed.principal.name,
                            user.unwrap_or_default()
                        ))
                    }
                    Err(e) => {
                        if crate::identity::is_sign_in_failure(&e) {
                            failures.failed(self.peer.ip(), Door::Kafka);
                        }
                        Err(match e {
                            crate::error::Error::Unauthorized => {
                                "the password is not a valid KafFlow token".to_string()
                            }
                            other => other.to_string(),
                        })
                    }
                },
            },
        };
        match &outcome {
            Ok(session) => {
                tracing::debug!(peer = %self.peer, principal = %session.principal.name, "Gateway client signed in.");
            }
            Err(why) => {
                METRICS.gateway_auth_failures.inc();
                tracing::info!(peer = %self.peer, %why, "Gateway SASL authentication failed.");
            }
        }
        outcome
    }

    /// The versions offered, asked of the brokers once.
    pub(crate) async fn versions(&mut self) -> Result<Arc<Versions>, Fault> {
        let shared = Arc::clone(&self.shared);
        let upstream = self.upstream()?;
        let versions = shared
            .versions
            .get_or_try_init(|| async move { Versions::fetch(&upstream).await.map(Arc::new) })
            .await
            .map_err(|why| {
                self.rotate_upstream();
                Fault::Refused(format!("cannot learn the brokers' API versions: {why}"))
            })?;
        Ok(Arc::clone(versions))
    }

    /// The connection to this port's broker, made at first use.
    pub(crate) fn upstream(&mut self) -> Result<Arc<Upstream>, Fault> {
        if let Some(upstream) = &self.upstream {
            return Ok(Arc::clone(upstream));
        }
        let addrs = self.shared.upstream_of(self.target);
        if addrs.is_empty() {
            return Err(Fault::Refused("no upstream broker address".into()));
        }
        let addr = addrs[self.next_upstream % addrs.len()].clone();
        let upstream = Arc::new(Upstream::new(addr));
        self.upstream = Some(Arc::clone(&upstream));
        Ok(upstream)
    }

    fn rotate_upstream(&mut self) {
        self.upstream = None;
        self.next_upstream = self.next_upstream.wrapping_add(1);
    }

    /// Forwards the request as it came: the broker's answer goes back as it comes.
    pub(crate) async fn forward(&mut self, request: &Request) -> Result<Reply, Fault> {
        self.forward_payload(&request.payload, true)
            .await
            .map(|answer| answer.map_or(Reply::Nothing, Reply::Forwarded))
    }

    /// Writes a request payload upstream; the answer, if one is expected.
    pub(crate) async fn forward_payload(
        &mut self,
        payload: &Bytes,
        expect_answer: bool,
    ) -> Result<Option<Answer>, Fault> {
        let upstream = self.upstream()?;
        match upstream.call(payload, expect_answer).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                self.rotate_upstream();
                Err(e.into())
            }
        }
    }
}

/// The user (if given) and the token from SASL bytes.
fn credentials(mechanism: Mechanism, bytes: &[u8]) -> Result<(Option<String>, String), String> {
    match mechanism {
        // authzid NUL authcid NUL password (RFC 4616).
        Mechanism::Plain => {
            let mut parts = bytes.split(|&b| b == 0);
            let (Some(authzid), Some(user), Some(password), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("malformed PLAIN credentials".into());
            };
            let text = |b: &[u8]| {
                std::str::from_utf8(b)
                    .map(str::to_string)
                    .map_err(|_| "PLAIN credentials are not UTF-8".to_string())
            };
            let (authzid, user, password) = (text(authzid)?, text(user)?, text(password)?);
            if !authzid.is_empty() && authzid != user {
                return Err("acting as another principal (authzid) is not allowed".into());
            }
            Ok((Some(user), password))
        }
        // GS2 header, then `auth=Bearer <token>` among \x01-separated key=value pairs (RFC 7628).
        Mechanism::OAuthBearer => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| "OAUTHBEARER message is not UTF-8".to_string())?;
            let token = text
                .split('\x01')
                .find_map(|kv| kv.strip_prefix("auth="))
                .and_then(|auth| {
                    auth.strip_prefix("Bearer ")
                        .or_else(|| auth.strip_prefix("bearer "))
                })
                .ok_or_else(|| "OAUTHBEARER message carries no bearer token".to_string())?;
            Ok((None, token.trim().to_string()))
        }
    }
}

/// A short, stable name of an API, for metrics and logs.
pub(crate) fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::Metadata => "metadata",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        ApiKey::FindCoordinator => "find_coordinator",
        ApiKey::JoinGroup => "join_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::DescribeGroups => "describe_groups",
        ApiKey::ListGroups => "list_groups",
        ApiKey::SaslHandshake => "sasl_handshake",
        ApiKey::ApiVersions => "api_versions",
        ApiKey::CreateTopics => "create_topics",
        ApiKey::DeleteTopics => "delete_topics",
        ApiKey::DeleteRecords => "delete_records",
        ApiKey::InitProducerId => "init_producer_id",
        ApiKey::OffsetForLeaderEpoch => "offset_for_leader_epoch",
        ApiKey::DescribeAcls => "describe_acls",
        ApiKey::CreateAcls => "create_acls",
        ApiKey::DeleteAcls => "delete_acls",
        ApiKey::DescribeConfigs => "describe_configs",
        ApiKey::AlterConfigs => "alter_configs",
        ApiKey::SaslAuthenticate => "sasl_authenticate",
        ApiKey::CreatePartitions => "create_partitions",
        ApiKey::IncrementalAlterConfigs => "incremental_alter_configs",
        ApiKey::DescribeCluster => "describe_cluster",
        ApiKey::ConsumerGroupHeartbeat => "consumer_group_heartbeat",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_credentials_are_user_and_token() {
        assert_eq!(
            credentials(Mechanism::Plain, b"\0alice\0s3cret"),
            Ok((Some("alice".into()), "s3cret".into()))
        );
        assert_eq!(
            credentials(Mechanism::Plain, b"alice\0alice\0s3cret"),
            Ok((Some("alice".into()), "s3cret".into()))
        );
        assert!(credentials(Mechanism::Plain, b"bob\0alice\0s3cret").is_err());
        assert!(credentials(Mechanism::Plain, b"alice\0s3cret").is_err());
        assert!(credentials(Mechanism::Plain, b"\0a\0b\0c").is_err());
        assert!(credentials(Mechanism::Plain, b"\0\xff\0x").is_err());
    }

    #[test]
    fn oauthbearer_carries_the_bearer_token() {
        assert_eq!(
            credentials(
                Mechanism::OAuthBearer,
                b"n,,\x01auth=Bearer eyJ.x.y\x01\x01"
            ),
            Ok((None, "eyJ.x.y".into()))
        );
        assert!(credentials(Mechanism::OAuthBearer, b"n,,\x01\x01").is_err());
    }
}
