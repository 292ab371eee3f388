//! TLS material for `rediss://`: a private CA and a client identity, checked when they are
//! given so that a wrong file is reported at startup rather than at every handshake.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// PEM material for `rediss://` connections; empty trusts the bundled webpki (Mozilla) roots.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// CA certificates to trust instead of the webpki roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key, for servers that require mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// What is wrong with a TLS file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The file holds no PEM certificate.
    #[error("no PEM certificate in it")]
    NoCertificate,
    /// The file holds no PEM private key.
    #[error("no PEM private key in it")]
    NoKey,
    /// A PEM section could not be read.
    #[error("{0}")]
    Pem(String),
    /// The key is not the certificate's, or cannot be used.
    #[error("{0}")]
    Identity(String),
}

impl RedisTls {
    /// Checks that `pem` holds at least one certificate.
    pub fn check_certificates(pem: &[u8]) -> Result<(), TlsError> {
        let found = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        if found.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        Ok(())
    }

    /// Checks that `key` is a private key for the first certificate of `chain`.
    pub fn check_identity(chain: &[u8], key: &[u8]) -> Result<(), TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey,
            other => TlsError::Pem(other.to_string()),
        })?;
        CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map(drop)
            .map_err(|e| TlsError::Identity(e.to_string()))
    }
}

/// Whether `url` asks for TLS (`rediss://`, or `valkeys://` as the redis crate also accepts).
pub fn is_tls_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    })
}

/// Makes ring the process's rustls crypto provider unless one is set already: the redis crate
/// builds its TLS configurations from the process default.
pub(super) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls_are_rediss_or_valkeys_in_any_case() {
        for url in ["rediss://h:6380", "REDISS://h", "valkeys://h:6380/0"] {
            assert!(is_tls_url(url), "{url}");
        }
        for url in [
            "redis://h:6379",
            "valkey://h",
            "h:6379",
            "unix:///tmp/redis.sock",
        ] {
            assert!(!is_tls_url(url), "{url}");
        }
    }

    #[test]
    fn files_without_pem_items_are_named_for_what_they_lack() {
        assert_eq!(
            RedisTls::check_certificates(b"not a certificate"),
            Err(TlsError::NoCertificate)
        );
        let certificate = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            RedisTls::check_identity(certificate, b"no key"),
            Err(TlsError::NoKey)
        );
    }
}
