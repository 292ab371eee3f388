//! PEM files read into rustls types, each problem naming the setting and the file.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS file that cannot be used: which setting named it, where it is, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} {}: {problem}", path.display())]
pub struct TlsFileError {
    /// The flag (or variable) that named the file.
    pub setting: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl TlsFileError {
    pub(super) fn new(setting: &'static str, path: &Path, problem: impl Into<String>) -> Self {
        Self {
            setting,
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

/// The certificates of a PEM file, at least one.
pub(super) fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let error = |problem: String| TlsFileError::new(setting, path, problem);
    let pem = std::fs::read(path).map_err(|e| error(format!("cannot read it: {e}")))?;
    let found = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not a PEM certificate file: {e}")))?;
    if found.is_empty() {
        return Err(error("no PEM certificate in it".to_owned()));
    }
    Ok(found)
}

/// The private key of a PEM file.
pub(super) fn private_key(
    setting: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let error = |problem: String| TlsFileError::new(setting, path, problem);
    let pem = std::fs::read(path).map_err(|e| error(format!("cannot read it: {e}")))?;
    // The key's bytes never go into a message.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => error("no PEM private key in it".to_owned()),
        _ => error("not a readable PEM private key".to_owned()),
    })
}

/// The CA certificates of a PEM file, as trust roots.
pub(super) fn roots(setting: &'static str, path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(setting, path)? {
        roots
            .add(certificate)
            .map_err(|e| TlsFileError::new(setting, path, format!("not a usable CA: {e}")))?;
    }
    Ok(roots)
}
