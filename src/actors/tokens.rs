//! The tokens actor: bearer tokens that KafFlow issues, kept as events.
//!
//! `token_issued` records a token's name, roles, expiry and the SHA-256 of its secret (never
//! the secret); `token_revoked` ends it. The actor is the single writer of both. After every
//! commit it publishes the committed book on a `watch` channel: sign-in reads the latest book
//! without a message to the actor, and connections signed in with a token wait on the same
//! channel to learn of its revocation the moment it is committed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use super::event_store::EventStore;
use super::journal::{self, Journal, Journaled, Journaling, Owner};
use crate::error::{Error, Result};
use crate::events::{EventKind, NewEvent};
use crate::identity::{token_sha256, Principal, Role};
use crate::paging::{Page, PageOf};

/// What an issued token's secret starts with, so that it is recognisable in a config or a leak.
pub const TOKEN_PREFIX: &str = "kft_";
/// The longest `expires_in_days`: ten years.
const MAX_EXPIRY_DAYS: i64 = 3650;
const MAX_NAME_LEN: usize = 64;

/// One issued token as the log knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub id: Uuid,
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub sha256: String,
    pub issued_by: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: Option<(String, DateTime<Utc>)>,
}

/// Where a token stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenStatus {
    Active,
    Expired,
    Revoked,
}

impl IssuedToken {
    pub fn status(&self, now: DateTime<Utc>) -> TokenStatus {
        if self.revoked.is_some() {
            TokenStatus::Revoked
        } else if self.expires_at.is_some_and(|at| now >= at) {
            TokenStatus::Expired
        } else {
            TokenStatus::Active
        }
    }

    fn view(&self, now: DateTime<Utc>) -> TokenView {
        TokenView {
            id: self.id,
            name: self.name.clone(),
            roles: self.roles.clone(),
            status: self.status(now),
            issued_by: self.issued_by.clone(),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            revoked_by: self.revoked.as_ref().map(|(by, _)| by.clone()),
            revoked_at: self.revoked.as_ref().map(|(_, at)| *at),
        }
    }
}

/// A token as the API shows it: never its secret or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub status: TokenStatus,
    pub issued_by: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just issued: the view, and the secret, shown this once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Issued {
    #[serde(flatten)]
    pub view: TokenView,
    pub token: String,
}

/// The state rebuilt from the log: every issued token, by id and by the hash of its secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBook {
    by_id: BTreeMap<Uuid, IssuedToken>,
    by_hash: HashMap<String, Uuid>,
}

impl Journaled for TokenBook {
    fn apply(&mut self, event: &NewEvent) {
        TokenBook::apply(self, event);
    }
}

impl TokenBook {
    /// Turns one of this actor's events into state; replay and live appends both come here.
    pub fn apply(&mut self, event: &NewEvent) {
        match &event.kind {
            EventKind::TokenIssued {
                token_id,
                name,
                roles,
                sha256,
                expires_at,
            } => {
                self.by_hash.insert(sha256.clone(), *token_id);
                self.by_id.insert(
                    *token_id,
                    IssuedToken {
                        id: *token_id,
                        name: name.clone(),
                        roles: roles.clone(),
                        sha256: sha256.clone(),
                        issued_by: event.actor.clone(),
                        issued_at: event.at,
                        expires_at: *expires_at,
                        revoked: None,
                    },
                );
            }
            EventKind::TokenRevoked { token_id } => {
                if let Some(token) = self.by_id.get_mut(token_id) {
                    token.revoked.get_or_insert((event.actor.clone(), event.at));
                }
            }
            // Owned by other actors (`journal::owner`); never handed to this book.
            _ => {}
        }
    }

    /// The token whose secret hashes to `sha256`, whatever its status.
    pub fn by_hash(&self, sha256: &str) -> Option<&IssuedToken> {
        self.by_hash.get(sha256).and_then(|id| self.by_id.get(id))
    }

    pub fn get(&self, id: &Uuid) -> Option<&IssuedToken> {
        self.by_id.get(id)
    }

    pub fn is_revoked(&self, id: &Uuid) -> bool {
        self.by_id.get(id).is_some_and(|t| t.revoked.is_some())
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The latest committed book, for sign-in and for connections that watch for revocation.
pub type PublishedTokens = watch::Receiver<Arc<TokenBook>>;

/// Issue a token (admin).
#[derive(Message)]
#[rtype(result = "Result<Issued>")]
pub struct IssueToken {
    pub principal: Principal,
    pub name: String,
    pub roles: Vec<Role>,
    pub expires_in_days: Option<i64>,
}

/// One page of the issued tokens, oldest first (admin).
#[derive(Message)]
#[rtype(result = "Result<Page<Uuid, TokenView>>")]
pub struct ListTokens {
    pub principal: Principal,
    pub page: PageOf<Uuid>,
}

/// Revoke a token (admin).
#[derive(Message)]
#[rtype(result = "Result<TokenView>")]
pub struct RevokeToken {
    pub principal: Principal,
    pub id: Uuid,
}

pub struct Tokens {
    journal: Journal<TokenBook>,
    published: watch::Sender<Arc<TokenBook>>,
    /// The names of the config's principals, which an issued token may not take.
    reserved: HashSet<String>,
}

impl Tokens {
    /// Starts from the replayed book; the receiver sees it at once and every commit after.
    pub fn new(
        book: TokenBook,
        store: Addr<EventStore>,
        reserved: HashSet<String>,
    ) -> (Self, PublishedTokens) {
        let (published, receiver) = watch::channel(Arc::new(book.clone()));
        let tokens = Tokens {
            journal: Journal::new(Owner::Tokens, book, store),
            published,
            reserved,
        };
        (tokens, receiver)
    }

    fn decide_issue(&self, msg: &IssueToken, sha256: String) -> Result<NewEvent> {
        msg.principal.require_any(&[Role::Admin])?;
        check_name(&msg.name)?;
        if self.reserved.contains(&msg.name) {
            return Err(Error::NameTaken(msg.name.clone()));
        }
        if msg.roles.is_empty() {
            return Err(Error::InvalidTokenRequest(
                "roles must name at least one role".into(),
            ));
        }
        let expires_at = match msg.expires_in_days {
            None => None,
            Some(days) if (1..=MAX_EXPIRY_DAYS).contains(&days) => {
                Some(Utc::now() + chrono::Duration::days(days))
            }
            Some(days) => {
                return Err(Error::InvalidTokenRequest(format!(
                    "expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}, not {days}"
                )))
            }
        };
        // Microseconds, as the log keeps them, so live and replayed state agree.
        let expires_at = expires_at
            .and_then(|at| DateTime::from_timestamp_micros(at.timestamp_micros()).or(Some(at)));
        let kind = EventKind::TokenIssued {
            token_id: Uuid::now_v7(),
            name: msg.name.clone(),
            roles: msg.roles.iter().copied().collect(),
            sha256,
            expires_at,
        };
        Ok(NewEvent::now(&msg.principal.name, None, None, kind))
    }

    fn publish(published: &watch::Sender<Arc<TokenBook>>, book: &TokenBook) {
        published.send_replace(Arc::new(book.clone()));
    }
}

/// 1 to 64 characters of letters, digits and `. _ - @`, and not `system`.
fn check_name(name: &str) -> Result<()> {
    let fine = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        && name != "system";
    if fine {
        Ok(())
    } else {
        Err(Error::InvalidTokenRequest(format!(
            "name {name:?} must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ - @, and not system"
        )))
    }
}

/// A new secret: the prefix and 32 random bytes, base64url.
fn new_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness for a token: {e}")))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

impl Journaling for Tokens {
    type State = TokenBook;

    fn journal(&mut self) -> &mut Journal<TokenBook> {
        &mut self.journal
    }
}

impl Actor for Tokens {
    type Context = Context<Self>;
}

impl Handler<IssueToken> for Tokens {
    type Result = ResponseFuture<Result<Issued>>;

    fn handle(&mut self, msg: IssueToken, ctx: &mut Context<Self>) -> Self::Result {
        let decided = self.journal.staged().map(|_| ()).and_then(|()| {
            let secret = new_secret()?;
            let event = self.decide_issue(&msg, token_sha256(&secret))?;
            Ok((secret, event))
        });
        let (secret, event) = match decided {
            Ok(decided) => decided,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let EventKind::TokenIssued { token_id, .. } = &event.kind else {
            return Box::pin(async { Err(Error::Unavailable) });
        };
        let id = *token_id;
        let published = self.published.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        journal::persist(self, ctx, vec![event], move |book, result| {
            let answer = result.and_then(|()| {
                Tokens::publish(&published, book);
                book.get(&id)
                    .map(|t| Issued {
                        view: t.view(Utc::now()),
                        token: secret,
                    })
                    .ok_or(Error::Unavailable)
            });
            let _ = tx.send(answer);
        });
        Box::pin(async move { rx.await.unwrap_or(Err(Error::Unavailable)) })
    }
}

impl Handler<ListTokens> for Tokens {
    type Result = Result<Page<Uuid, TokenView>>;

    fn handle(&mut self, msg: ListTokens, _: &mut Context<Self>) -> Self::Result {
        msg.principal.require_any(&[Role::Admin])?;
        let now = Utc::now();
        // UUID v7 ids: id order is issue order.
        let rest = self
            .journal
            .committed()
            .by_id
            .range(msg.page.range())
            .map(|(_, t)| t);
        Ok(Page::take(rest, msg.page.limit, |t| t.id).map(|t| t.view(now)))
    }
}

impl Handler<RevokeToken> for Tokens {
    type Result = ResponseFuture<Result<TokenView>>;

    fn handle(&mut self, msg: RevokeToken, ctx: &mut Context<Self>) -> Self::Result {
        let decided = msg
            .principal
            .require_any(&[Role::Admin])
            .and_then(|()| self.journal.staged())
            .and_then(|book| match book.get(&msg.id) {
                None => Err(Error::NotFound(format!("token {}", msg.id))),
                Some(t) if t.revoked.is_some() => Err(Error::AlreadyRevoked(msg.id)),
                Some(_) => Ok(NewEvent::now(
                    &msg.principal.name,
                    None,
                    None,
                    EventKind::TokenRevoked { token_id: msg.id },
                )),
            });
        let event = match decided {
            Ok(event) => event,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let id = msg.id;
        let published = self.published.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        journal::persist(self, ctx, vec![event], move |book, result| {
            let answer = result.and_then(|()| {
                Tokens::publish(&published, book);
                tracing::info!(token_id = %id, "Token revoked.");
                book.get(&id)
                    .map(|t| t.view(Utc::now()))
                    .ok_or(Error::Unavailable)
            });
            let _ = tx.send(answer);
        });
        Box::pin(async move { rx.await.unwrap_or(Err(Error::Unavailable)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(id: Uuid, name: &str, hash: &str, expires_at: Option<DateTime<Utc>>) -> NewEvent {
        NewEvent::now(
            "carol",
            None,
            None,
            EventKind::TokenIssued {
                token_id: id,
                name: name.into(),
                roles: BTreeSet::from([Role::Producer]),
                sha256: hash.into(),
                expires_at,
            },
        )
    }

    #[test]
    fn the_book_finds_tokens_by_hash_and_knows_revocation_and_expiry() {
        let mut book = TokenBook::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let past = Utc::now() - chrono::Duration::days(1);
        book.apply(&issued(a, "loader", "aa", None));
        book.apply(&issued(b, "old", "bb", Some(past)));
        let now = Utc::now();
        assert_eq!(book.by_hash("aa").map(|t| t.id), Some(a));
        assert_eq!(
            book.by_hash("bb").map(|t| t.status(now)),
            Some(TokenStatus::Expired)
        );
        assert!(book.by_hash("cc").is_none());
        assert!(!book.is_revoked(&a));
        book.apply(&NewEvent::now(
            "dave",
            None,
            None,
            EventKind::TokenRevoked { token_id: a },
        ));
        let token = book.get(&a).expect("kept after revocation");
        assert_eq!(token.status(now), TokenStatus::Revoked);
        assert_eq!(
            token.revoked.as_ref().map(|(by, _)| by.as_str()),
            Some("dave")
        );
        assert!(book.is_revoked(&a));
        // A second revocation (never written, but replay must not mind) keeps the first.
        book.apply(&NewEvent::now(
            "erin",
            None,
            None,
            EventKind::TokenRevoked { token_id: a },
        ));
        assert_eq!(
            book.get(&a)
                .and_then(|t| t.revoked.clone())
                .map(|(by, _)| by),
            Some("dave".to_string())
        );
    }

    #[test]
    fn names_follow_the_rules() {
        assert!(check_name("ci-loader@prod.eu_1").is_ok());
        for bad in ["", "system", "a b", "ü", &"x".repeat(65)] {
            assert!(
                matches!(check_name(bad), Err(Error::InvalidTokenRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secrets_are_prefixed_random_and_distinct() {
        let a = new_secret().expect("random");
        let b = new_secret().expect("random");
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(a, b);
    }
}
