//! What is stored of a runtime tenant, and of each change made to one: the records every
//! backend keeps (as JSON), the rules a tenant id and its labels follow, and new API keys.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::authz::{hex, key_digest};

/// The most tenants the service API keeps per domain.
pub const MAX_TENANTS: usize = 10_000;
/// The most API keys a tenant created through the API holds at once.
pub const MAX_KEYS: usize = 20;
/// The most labels on a tenant.
pub const MAX_LABELS: usize = 32;
/// The longest tenant id or label name, in bytes.
pub const MAX_ID: usize = 64;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;

/// A tenant created through the service API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// The domain whose `authorization:` section it belongs to.
    pub domain: String,
    /// Its id (`x-tenant-id` upstream).
    pub id: String,
    /// One of the domain's tiers.
    pub tier: String,
    /// Free-form labels, for the caller's own bookkeeping.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its API keys, as digests.
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// Random, new at every write: a change applies only to the revision it was made from.
    pub revision: String,
}

/// An API key, as stored: its id and digest, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The first 16 hex digits of its digest: how the key is named everywhere.
    pub id: String,
    /// `sha256:<64 hex digits>`, as `tollgate hash-key` prints it.
    pub digest: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// One change, in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"at": "2026-05-01T12:00:00Z", "who": "token:3e1f0c9a7d2b4e58",
    "action": "key_created", "domain": "saas", "tenant": "initech", "key_id": "5b0d6f3a9c1e2d47"}))]
pub struct AuditEntry {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who: `token:<id>`, the admin token's id (the first 16 hex digits of its digest).
    pub who: String,
    /// What was done.
    pub action: Action,
    /// The domain.
    pub domain: String,
    /// The tenant's id.
    pub tenant: String,
    /// The key created or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The tenant's tier after the change (creations and updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The keys a tenant's deletion revoked, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_keys: Vec<String>,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A tenant was created.
    TenantCreated,
    /// A tenant's tier or labels changed.
    TenantUpdated,
    /// A tenant was deleted, with its keys.
    TenantDeleted,
    /// An API key was created.
    KeyCreated,
    /// An API key was deleted.
    KeyDeleted,
}

/// A new API key: the key itself (shown once) and what is stored of it.
#[derive(Debug)]
pub struct NewKey {
    /// The key: `tgk_` and 64 hex digits of randomness.
    pub key: String,
    /// Its stored form.
    pub record: KeyRecord,
}

/// Now, as records write it: RFC 3339, UTC, whole seconds.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A fresh revision.
pub fn revision() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// The id of the key (or token) with `digest`: its first 16 hex digits.
pub fn key_id(digest: &[u8; 32]) -> String {
    hex(&digest[..8])
}

impl NewKey {
    /// A key from the operating system's randomness, created `at`.
    pub fn generate(at: &str) -> Result<Self, getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)?;
        let key = format!("tgk_{}", hex(&secret));
        let digest = key_digest(&key);
        Ok(Self {
            record: KeyRecord {
                id: key_id(&digest),
                digest: format!("sha256:{}", hex(&digest)),
                created_at: at.to_owned(),
            },
            key,
        })
    }
}

/// Checks a tenant id: 1 to 64 ASCII letters, digits, `.`, `_` or `-`, starting with a letter
/// or digit (it goes into paths, headers and metric labels).
pub fn check_id(id: &str) -> Result<(), String> {
    let well_formed = !id.is_empty()
        && id.len() <= MAX_ID
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to {MAX_ID} ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

/// Checks labels: at most 32, names as tenant ids, values at most 256 bytes without control
/// characters. On error: the offending label's name (or `None` for their number) and why.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), (Option<&str>, String)> {
    if labels.len() > MAX_LABELS {
        return Err((None, format!("at most {MAX_LABELS} labels")));
    }
    for (name, value) in labels {
        check_id(name).map_err(|why| (Some(name.as_str()), format!("name {why}")))?;
        if value.len() > MAX_LABEL_VALUE || value.chars().any(char::is_control) {
            return Err((
                Some(name),
                format!(
                    "value must be at most {MAX_LABEL_VALUE} bytes, without control characters"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::authz::parse_digest;

    #[test]
    fn a_new_key_is_stored_as_its_digest_and_named_by_its_prefix() {
        let new = NewKey::generate("2026-05-01T12:00:00Z").unwrap();
        assert!(new.key.starts_with("tgk_") && new.key.len() == 68);
        let digest = parse_digest(&new.record.digest).unwrap();
        assert_eq!(digest, key_digest(&new.key));
        assert_eq!(new.record.id, new.record.digest[7..23]);
        assert_ne!(new.key, NewKey::generate("").unwrap().key);
    }

    #[test]
    fn ids_and_labels_are_checked() {
        for good in ["acme", "a", "Tenant-01.eu_west", &"x".repeat(64)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-acme", "a b", "ünï", "a/b", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(check_labels(&labels(&[("team", "billing ü")])).is_ok());
        assert_eq!(
            check_labels(&labels(&[("bad name", "x")])).unwrap_err().0,
            Some("bad name")
        );
        assert!(check_labels(&labels(&[("team", "a\nb")])).is_err());
        let many: BTreeMap<String, String> =
            (0..33).map(|i| (format!("l{i}"), String::new())).collect();
        assert_eq!(check_labels(&many).unwrap_err().0, None);
    }
}
