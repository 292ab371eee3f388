//! Admin tokens: management endpoints require `Authorization: Bearer <token>`, checked
//! against the digests in `--api-admin-token-file` (one `sha256:…` per line, as
//! `tollgate hash-key` prints it; blank lines and `#` comments are skipped). A token is known
//! by its id, the first 16 hex digits of its digest: the audit log says who with it, and the
//! token itself is never kept, logged or compared other than in constant time.

use std::path::{Path, PathBuf};

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::authz::key_digest;
use crate::config::authz::parse_digest;
use crate::tenants::record::key_id;

/// The admin tokens' digests.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    digests: Vec<[u8; 32]>,
}

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read.
    #[error("--api-admin-token-file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a digest (not echoed: it may be a token pasted by mistake).
    #[error(
        "--api-admin-token-file {path}, line {line}: not sha256:<64 hex digits> (make one with `printf %s \"$TOKEN\" | tollgate hash-key`)"
    )]
    NotADigest {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
    },
    /// It holds no digest.
    #[error("--api-admin-token-file {path} holds no token digest")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl AdminTokens {
    /// No token: every management call is refused.
    pub fn none() -> Self {
        Self::default()
    }

    /// The digests in the file at `path`.
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut digests = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            digests.push(parse_digest(line).ok_or_else(|| TokenError::NotADigest {
                path: path.to_owned(),
                line: number + 1,
            })?);
        }
        if digests.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self { digests })
    }

    /// Whether any token is accepted.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The id of the admin token `headers` bear, if they bear one: `token:<16 hex digits>`.
    pub fn bearer(&self, headers: &HeaderMap) -> Option<String> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return None;
        }
        let digest = key_digest(token);
        // Every digest is compared, so the time taken says nothing about which matched.
        let matched = self
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(&digest)
            });
        bool::from(matched).then(|| format!("token:{}", key_id(&digest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::hash_key;

    fn bearing(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", value.parse().unwrap());
        headers
    }

    #[test]
    fn a_token_is_known_by_its_digest_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        let text = format!(
            "# ops\n{}\n\n  {}  \n",
            hash_key("s3cret"),
            hash_key("other")
        );
        std::fs::write(&file, text).unwrap();
        let tokens = AdminTokens::read(&file).unwrap();
        let who = tokens.bearer(&bearing("Bearer s3cret")).unwrap();
        assert_eq!(who, format!("token:{}", &hash_key("s3cret")[7..23]));
        assert!(tokens.bearer(&bearing("bearer  other ")).is_some());
        for wrong in ["Bearer S3cret", "Bearer ", "Basic s3cret", "s3cret"] {
            assert_eq!(tokens.bearer(&bearing(wrong)), None, "{wrong}");
        }
        assert_eq!(tokens.bearer(&HeaderMap::new()), None);
        assert_eq!(AdminTokens::none().bearer(&bearing("Bearer s3cret")), None);
    }

    #[test]
    fn a_bad_file_says_which_line_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, format!("{}\nmy-raw-token\n", hash_key("a"))).unwrap();
        let error = AdminTokens::read(&file).unwrap_err().to_string();
        assert!(
            error.contains("line 2") && !error.contains("my-raw-token"),
            "{error}"
        );
        std::fs::write(&file, "# nothing\n").unwrap();
        assert!(matches!(
            AdminTokens::read(&file),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            AdminTokens::read(&dir.path().join("missing")),
            Err(TokenError::Read { .. })
        ));
    }
}
