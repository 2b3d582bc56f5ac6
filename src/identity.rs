//! Who is calling. A bearer token is one of three kinds, tried in this order: a principal of
//! the config file (found by the SHA-256 of its token), a token KafFlow issued (found the same
//! way in the tokens actor's published book), or a JWT of the configured identity provider.
//! Sign-in never sends a message to an actor: the tokens book is read from its `watch`.
//!
//! Failed sign-ins are counted per client address (`SignInFailures`), for HTTP and TCP alike.

pub mod jwt;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::actors::tokens::{PublishedTokens, TokenStatus};
use crate::error::{Error, Result};
use crate::metrics::METRICS;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Producer,
    Consumer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        })
    }
}

impl Role {
    /// The role a name stands for, if it is one of KafFlow's.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "producer" => Some(Role::Producer),
            "consumer" => Some(Role::Consumer),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: BTreeSet<Role>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Passes when the principal holds any of `roles`.
    pub fn require_any(&self, roles: &[Role]) -> Result<()> {
        if roles.iter().any(|r| self.has(*r)) {
            return Ok(());
        }
        let names: Vec<String> = roles.iter().map(Role::to_string).collect();
        Err(Error::Forbidden(format!(
            "{} needs the role {}",
            self.name,
            names.join(" or ")
        )))
    }
}

/// Which kind of token a caller signed in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A `[[principals]]` entry of the config file.
    Config,
    /// A token KafFlow issued, by its id.
    Issued(Uuid),
    /// A JWT of the identity provider.
    Jwt,
}

/// A caller that signed in, and how.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub principal: Principal,
    pub credential: Credential,
}

/// Why a token was refused, beyond "unknown": each has its own 401 code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the token was revoked")]
    Revoked,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature does not verify: {0}")]
    BadSignature(String),
    #[error("the token's issuer is not the configured one")]
    WrongIssuer,
    #[error("the token's audience does not name this service")]
    WrongAudience,
    #[error("the token cannot be read: {0}")]
    Malformed(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Revoked => "token_revoked",
            Refusal::Expired => "token_expired",
            Refusal::NotYetValid => "token_not_yet_valid",
            Refusal::BadSignature(_) => "invalid_signature",
            Refusal::WrongIssuer => "invalid_issuer",
            Refusal::WrongAudience => "invalid_audience",
            Refusal::Malformed(_) => "invalid_token",
        }
    }
}

/// Hex SHA-256 of a token: what the config and the log store instead of the token.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The principals of the config file, indexed by token hash.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    by_token_hash: HashMap<String, Principal>,
}

impl Directory {
    pub fn new(entries: impl IntoIterator<Item = (String, Principal)>) -> Self {
        Directory {
            by_token_hash: entries
                .into_iter()
                .map(|(hash, p)| (hash.to_ascii_lowercase(), p))
                .collect(),
        }
    }

    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        self.find(&token_sha256(token)).ok_or(Error::Unauthorized)
    }

    fn find(&self, hash: &str) -> Option<Principal> {
        self.by_token_hash.get(hash).cloned()
    }

    /// The names of the config's principals, which no issued token may take.
    pub fn names(&self) -> HashSet<String> {
        self.by_token_hash
            .values()
            .map(|p| p.name.clone())
            .collect()
    }
}

/// Everything sign-in needs, shared by the HTTP facade and the TCP listener.
#[derive(Clone)]
pub struct Identity {
    directory: Arc<Directory>,
    tokens: PublishedTokens,
    jwt: Option<Arc<jwt::Verifier>>,
    failures: Arc<SignInFailures>,
}

impl Identity {
    pub fn new(
        directory: Directory,
        tokens: PublishedTokens,
        jwt: Option<jwt::Verifier>,
        max_failures_per_minute: u32,
    ) -> Self {
        Identity {
            directory: Arc::new(directory),
            tokens,
            jwt: jwt.map(Arc::new),
            failures: Arc::new(SignInFailures::new(max_failures_per_minute)),
        }
    }

    /// Finds who `token` is. A JWT may need the JWKS fetched again (an unknown `kid`), hence
    /// async; the other kinds are answered from memory. Boxed: every handler awaits it, and
    /// its type would otherwise be part of every handler's future.
    pub fn sign_in<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<SignedIn>> {
        Box::pin(self.sign_in_inner(token))
    }

    async fn sign_in_inner(&self, token: &str) -> Result<SignedIn> {
        let hash = token_sha256(token);
        if let Some(principal) = self.directory.find(&hash) {
            return Ok(SignedIn {
                principal,
                credential: Credential::Config,
            });
        }
        let issued = self.tokens.borrow().by_hash(&hash).cloned();
        if let Some(issued) = issued {
            return match issued.status(Utc::now()) {
                TokenStatus::Active => Ok(SignedIn {
                    principal: Principal {
                        name: issued.name,
                        roles: issued.roles,
                    },
                    credential: Credential::Issued(issued.id),
                }),
                TokenStatus::Revoked => Err(Error::TokenRefused(Refusal::Revoked)),
                TokenStatus::Expired => Err(Error::TokenRefused(Refusal::Expired)),
            };
        }
        match &self.jwt {
            Some(verifier) if jwt::looks_like_jwt(token) => {
                let principal = verifier.verify(token).await?;
                Ok(SignedIn {
                    principal,
                    credential: Credential::Jwt,
                })
            }
            _ => Err(Error::Unauthorized),
        }
    }

    /// Resolves once `credential` is revoked (never for config principals and JWTs, which
    /// KafFlow cannot revoke). A connection signed in with it selects on this to close.
    pub fn revoked(&self, credential: Credential) -> BoxFuture<'static, ()> {
        let Credential::Issued(id) = credential else {
            return Box::pin(std::future::pending());
        };
        let mut tokens = self.tokens.clone();
        Box::pin(async move {
            let gone = tokens.wait_for(|book| book.is_revoked(&id)).await.is_err();
            if gone {
                // The tokens actor is gone (shutdown): nothing more will be revoked.
                std::future::pending::<()>().await;
            }
        })
    }

    /// The failed sign-ins of client addresses.
    pub fn failures(&self) -> &SignInFailures {
        &self.failures
    }
}

/// Whether a refused sign-in counts against the client's address: a 401 (the token is not
/// good), not a 403 (a good token without the role).
pub fn is_sign_in_failure(error: &Error) -> bool {
    matches!(error, Error::Unauthorized | Error::TokenRefused(_))
}

/// Where a sign-in attempt came from, for the per-address counts and the metrics' label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Http,
    Tcp,
    /// SASL on the Kafka-protocol gateway.
    Kafka,
}

/// Failed sign-ins per client address, in windows of a minute. An address with
/// `max_per_minute` failures in its window is refused until a minute after the last of them.
pub struct SignInFailures {
    max_per_minute: u32,
    by_address: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Past this many addresses, windows that are over are dropped before a new one is added.
const PRUNE_AT: usize = 10_000;

impl SignInFailures {
    pub fn new(max_per_minute: u32) -> Self {
        SignInFailures {
            max_per_minute: max_per_minute.max(1),
            by_address: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        self.by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refuses an attempt from `address` while it is blocked (429, with the seconds left).
    pub fn admit(&self, address: IpAddr, door: Door) -> Result<()> {
        self.admit_at(address, door, Instant::now())
    }

    fn admit_at(&self, address: IpAddr, door: Door, now: Instant) -> Result<()> {
        let blocked_until = self.lock().get(&address).and_then(|w| w.blocked_until);
        match blocked_until {
            Some(until) if until > now => {
                METRICS.signin_refused.inc();
                tracing::debug!(%address, ?door, "Sign-in refused: too many failures.");
                let left = until.saturating_duration_since(now);
                Err(Error::TooMany {
                    what: "failed sign-ins from this address within a minute",
                    limit: u64::from(self.max_per_minute),
                    retry_after_s: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed sign-in of `address`.
    pub fn failed(&self, address: IpAddr, door: Door) {
        self.failed_at(address, door, Instant::now());
    }

    fn failed_at(&self, address: IpAddr, door: Door, now: Instant) {
        METRICS.signin_failures.inc();
        let mut windows = self.lock();
        if windows.len() >= PRUNE_AT && !windows.contains_key(&address) {
            windows.retain(|_, w| {
                now.saturating_duration_since(w.started) < WINDOW
                    || w.blocked_until.is_some_and(|until| until > now)
            });
        }
        let window = windows.entry(address).or_insert(Window {
            started: now,
            failures: 0,
            blocked_until: None,
        });
        if now.saturating_duration_since(window.started) >= WINDOW {
            window.started = now;
            window.failures = 0;
        }
        window.failures += 1;
        if window.failures >= self.max_per_minute {
            if window.blocked_until.is_none_or(|until| until <= now) {
                tracing::warn!(%address, ?door, failures = window.failures, "Too many failed sign-ins; refusing the address for a minute.");
            }
            window.blocked_until = Some(now + WINDOW);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_principal_by_token_hash_only() {
        let alice = Principal {
            name: "alice".into(),
            roles: BTreeSet::from([Role::Producer]),
        };
        let dir = Directory::new([(token_sha256("s3cret").to_uppercase(), alice.clone())]);
        assert_eq!(dir.authenticate("s3cret").expect("known"), alice);
        assert!(matches!(
            dir.authenticate("other"),
            Err(Error::Unauthorized)
        ));
        assert!(alice.require_any(&[Role::Producer, Role::Admin]).is_ok());
        assert!(matches!(
            alice.require_any(&[Role::Admin]),
            Err(Error::Forbidden(_))
        ));
    }

    #[test]
    fn issued_tokens_sign_in_until_revoked_or_expired() {
        use crate::actors::tokens::TokenBook;
        use crate::events::{EventKind, NewEvent};
        let issued = |name: &str, secret: &str, expires_at| {
            let id = Uuid::now_v7();
            let kind = EventKind::TokenIssued {
                token_id: id,
                name: name.into(),
                roles: BTreeSet::from([Role::Producer]),
                sha256: token_sha256(secret),
                expires_at,
            };
            (id, NewEvent::now("carol", None, None, kind))
        };
        let revoke = |id| {
            NewEvent::now(
                "carol",
                None,
                None,
                EventKind::TokenRevoked { token_id: id },
            )
        };
        let mut book = TokenBook::default();
        let (live, event) = issued("live", "a", None);
        book.apply(&event);
        let past = Utc::now() - chrono::Duration::seconds(1);
        book.apply(&issued("old", "b", Some(past)).1);
        let (gone, event) = issued("gone", "c", None);
        book.apply(&event);
        book.apply(&revoke(gone));
        let (publish, tokens) = tokio::sync::watch::channel(Arc::new(book.clone()));
        let identity = Identity::new(Directory::default(), tokens, None, 30);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let signed = identity.sign_in("a").await.expect("a live token");
            assert_eq!(signed.principal.name, "live");
            assert_eq!(signed.credential, Credential::Issued(live));
            let refusal = |token: &'static str| {
                let identity = identity.clone();
                async move { identity.sign_in(token).await.err().map(|e| e.code()) }
            };
            assert_eq!(refusal("b").await, Some("token_expired"));
            assert_eq!(refusal("c").await, Some("token_revoked"));
            assert_eq!(refusal("unknown").await, Some("unauthorized"));
            // Without [auth.jwt], a JWT is just an unknown token.
            assert_eq!(refusal("eyJh.eyJz.sig").await, Some("unauthorized"));
            // A connection of the live token learns of its revocation from the next publish.
            let revoked = identity.revoked(signed.credential);
            book.apply(&revoke(live));
            publish.send_replace(Arc::new(book));
            tokio::time::timeout(Duration::from_secs(10), revoked)
                .await
                .expect("the revocation reaches the waiting connection");
            assert_eq!(refusal("a").await, Some("token_revoked"));
        });
    }

    #[test]
    fn an_address_is_refused_for_a_minute_after_its_failures() {
        let failures = SignInFailures::new(3);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t0 = Instant::now();
        for i in 0..2 {
            failures.failed_at(a, Door::Http, t0 + Duration::from_secs(i));
        }
        assert!(
            failures.admit_at(a, Door::Http, t0).is_ok(),
            "below the limit"
        );
        failures.failed_at(a, Door::Tcp, t0 + Duration::from_secs(10));
        let refused = failures.admit_at(a, Door::Http, t0 + Duration::from_secs(11));
        match refused {
            Err(Error::TooMany { retry_after_s, .. }) => assert_eq!(retry_after_s, 59),
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(
            failures
                .admit_at(b, Door::Http, t0 + Duration::from_secs(11))
                .is_ok(),
            "another address is not affected"
        );
        assert!(
            failures
                .admit_at(a, Door::Http, t0 + Duration::from_secs(71))
                .is_ok(),
            "a minute after the last failure the address may try again"
        );
        // Failures spread over more than a minute never add up to a block.
        let c: IpAddr = [10, 0, 0, 3].into();
        for i in 0..6 {
            failures.failed_at(c, Door::Http, t0 + Duration::from_secs(i * 40));
            assert!(failures
                .admit_at(c, Door::Http, t0 + Duration::from_secs(i * 40))
                .is_ok());
        }
    }
}
