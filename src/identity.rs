//! Who is calling: principals from the config, found by the SHA-256 of their bearer token.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

/// Hex SHA-256 of a token: what the config stores instead of the token.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The principals, indexed by token hash.
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
        self.by_token_hash
            .get(&token_sha256(token))
            .cloned()
            .ok_or(Error::Unauthorized)
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
}
