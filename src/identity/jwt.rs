//! Single sign-on: JWT bearer tokens of an OIDC identity provider, checked against its JWKS
//! with the `jsonwebtoken` crate (no hand-written crypto). The keys come from a file or a URL
//! and are read again when a token names a `kid` that is not among them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{Principal, Refusal, Role};
use crate::error::{Error, Result};

/// The algorithms a JWT may use: asymmetric only, so a public key can never act as a secret.
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];
/// The shortest time between two reads of the JWKS caused by unknown `kid`s.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_LEEWAY_S: u64 = 300;

/// Where the identity provider's public keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

/// `[auth.jwt]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub jwks: JwksSource,
    pub issuer: String,
    pub audience: String,
    pub name_claim: String,
    pub roles_claim: String,
    pub role_map: BTreeMap<String, Role>,
    pub leeway_s: u64,
}

/// One usable key of the JWKS.
struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// Checks JWTs against the configured issuer, audience and keys.
pub struct Verifier {
    config: JwtConfig,
    keys: RwLock<Vec<Key>>,
    /// Held while the keys are read again; when they last were.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document; keys of a kind this service cannot use are skipped.
fn parse_jwks(text: &str) -> std::result::Result<Vec<Key>, String> {
    let doc: JwksDocument =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(
            jwk.algorithm,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
        ) {
            // A shared secret has no place in a public key set.
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                key,
            });
        }
    }
    Ok(keys)
}

/// Three dot-separated parts: worth trying as a JWT.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("ey")
}

impl Verifier {
    /// Builds the verifier and reads the keys once. A file that cannot be read stops startup;
    /// a URL that cannot be fetched is only logged (the IdP may come up later).
    pub async fn start(config: JwtConfig) -> std::result::Result<Verifier, String> {
        let verifier = Verifier {
            config,
            keys: RwLock::new(Vec::new()),
            refresh: tokio::sync::Mutex::new(None),
        };
        match verifier.load().await {
            Ok(keys) => verifier.replace_keys(keys),
            Err(e) => match &verifier.config.jwks {
                JwksSource::File(_) => return Err(e),
                JwksSource::Url(url) => {
                    tracing::warn!(%url, error = %e, "Cannot fetch the JWKS; will try again at the first JWT.")
                }
            },
        }
        Ok(verifier)
    }

    async fn load(&self) -> std::result::Result<Vec<Key>, String> {
        let text = match &self.config.jwks {
            JwksSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            JwksSource::Url(url) => {
                // A client per read: reads are rare, and sign-in runs on the HTTP runtime and
                // on the TCP listener's, which must not share pooled connections.
                let http = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
                let response = http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("cannot fetch {url}: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("{url} answered {}", response.status()));
                }
                response
                    .text()
                    .await
                    .map_err(|e| format!("cannot read {url}: {e}"))?
            }
        };
        parse_jwks(&text)
    }

    fn replace_keys(&self, keys: Vec<Key>) {
        tracing::info!(keys = keys.len(), "JWKS loaded.");
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
    }

    /// The key for `kid` (or the only key, for a token without one).
    fn key_for(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match kid {
            Some(kid) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| k.key.clone()),
            None if keys.len() == 1 => keys.first().map(|k| k.key.clone()),
            None => None,
        }
    }

    /// Reads the keys again for an unknown `kid`, at most once every `REFRESH_EVERY`; callers
    /// that wait meanwhile share the one read.
    async fn refresh_for(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let mut last = self.refresh.lock().await;
        // Someone else may have read the keys while we waited for the lock.
        if let Some(key) = self.key_for(kid) {
            return Some(key);
        }
        if last.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
            return None;
        }
        *last = Some(Instant::now());
        match self.load().await {
            Ok(keys) => self.replace_keys(keys),
            Err(e) => tracing::warn!(error = %e, "Cannot read the JWKS again."),
        }
        self.key_for(kid)
    }

    /// The principal a JWT names, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Principal> {
        let refused = |r: Refusal| Error::TokenRefused(r);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(Refusal::Malformed(e.to_string())))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(refused(Refusal::Malformed(format!(
                "algorithm {:?} is not accepted",
                header.alg
            ))));
        }
        let kid = header.kid.as_deref();
        let key = match self.key_for(kid) {
            Some(key) => key,
            None => self.refresh_for(kid).await.ok_or_else(|| {
                refused(Refusal::BadSignature(match kid {
                    Some(kid) => format!("no key with kid {kid:?}"),
                    None => "the token names no kid and the key set has not one key".into(),
                }))
            })?,
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway_s;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| {
                refused(match e.kind() {
                    ErrorKind::InvalidSignature => Refusal::BadSignature("wrong key".into()),
                    ErrorKind::ExpiredSignature => Refusal::Expired,
                    ErrorKind::ImmatureSignature => Refusal::NotYetValid,
                    ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
                    ErrorKind::InvalidAudience => Refusal::WrongAudience,
                    ErrorKind::InvalidAlgorithm => {
                        Refusal::BadSignature("the key does not fit the token's algorithm".into())
                    }
                    _ => Refusal::Malformed(e.to_string()),
                })
            })?
            .claims;
        self.principal(&claims)
    }

    /// Name and roles from the verified claims.
    fn principal(&self, claims: &serde_json::Value) -> Result<Principal> {
        let name = claim(claims, &self.config.name_claim)
            .and_then(serde_json::Value::as_str)
            .map(str::trim)
            .filter(|n| !n.is_empty() && *n != "system")
            .ok_or_else(|| {
                Error::TokenRefused(Refusal::Malformed(format!(
                    "no usable name in the claim {:?}",
                    self.config.name_claim
                )))
            })?
            .to_string();
        let values: Vec<&str> = match claim(claims, &self.config.roles_claim) {
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(serde_json::Value::as_str).collect()
            }
            Some(serde_json::Value::String(one)) => vec![one.as_str()],
            _ => Vec::new(),
        };
        let roles: BTreeSet<Role> = values
            .into_iter()
            .filter_map(|v| {
                self.config
                    .role_map
                    .get(v)
                    .copied()
                    .or_else(|| Role::parse(v))
            })
            .collect();
        if roles.is_empty() {
            return Err(Error::Forbidden(format!(
                "{name} has no KafFlow role in the claim {:?}",
                self.config.roles_claim
            )));
        }
        Ok(Principal { name, roles })
    }
}

/// A claim by name, or by a dotted path into nested objects (`realm_access.roles`). A claim
/// whose own name has a dot is found first.
fn claim<'a>(claims: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |value, part| value.get(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(role_map: BTreeMap<String, Role>) -> Verifier {
        Verifier {
            config: JwtConfig {
                jwks: JwksSource::File(PathBuf::from("/nonexistent")),
                issuer: "https://idp".into(),
                audience: "kafflow".into(),
                name_claim: "preferred_username".into(),
                roles_claim: "realm_access.roles".into(),
                role_map,
                leeway_s: 30,
            },
            keys: RwLock::new(Vec::new()),
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    #[test]
    fn roles_map_or_name_themselves_and_the_rest_is_ignored() {
        let v = verifier(BTreeMap::from([("kafka-admins".to_string(), Role::Admin)]));
        let claims = serde_json::json!({
            "preferred_username": "ann",
            "realm_access": {"roles": ["kafka-admins", "consumer", "offline_access"]}
        });
        let p = v.principal(&claims).expect("principal");
        assert_eq!(p.name, "ann");
        assert_eq!(p.roles, BTreeSet::from([Role::Admin, Role::Consumer]));
        let none =
            serde_json::json!({"preferred_username": "bo", "realm_access": {"roles": ["x"]}});
        assert!(matches!(v.principal(&none), Err(Error::Forbidden(_))));
        let nameless = serde_json::json!({"realm_access": {"roles": ["admin"]}});
        assert!(matches!(
            v.principal(&nameless),
            Err(Error::TokenRefused(Refusal::Malformed(_)))
        ));
        let system = serde_json::json!({"preferred_username": "system", "realm_access": {"roles": ["admin"]}});
        assert!(v.principal(&system).is_err());
    }

    #[test]
    fn a_jwks_keeps_the_keys_it_can_use() {
        let doc = r#"{"keys":[
            {"kty":"oct","kid":"s","k":"c2VjcmV0"},
            {"kty":"EC","kid":"e","crv":"P-256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"weird","kid":"w"}
        ]}"#;
        let keys = parse_jwks(doc).expect("parses");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("e"));
        assert!(parse_jwks("{}").is_err());
    }

    #[test]
    fn only_three_part_tokens_are_tried_as_jwts() {
        assert!(looks_like_jwt("eyJh.eyJz.sig"));
        assert!(!looks_like_jwt("kft_abc"));
        assert!(!looks_like_jwt("eyJh.eyJz"));
    }
}
