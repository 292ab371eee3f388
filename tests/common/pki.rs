//! Certificates made by `openssl` for the TLS tests, and TLS clients that use them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

/// Certificate authorities and the certificates they issue, in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
}

/// An issued certificate and its key.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A directory with a CA named `ca`.
    pub fn new() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.authority("ca");
        pki
    }

    /// A self-signed CA `name` (`name.crt`, `name.key`).
    pub fn authority(&self, name: &str) -> PathBuf {
        self.openssl(&format!(
            "req -x509 {NEW_KEY} -keyout {name}.key -out {name}.crt -days 2 -subj /CN={name}"
        ));
        self.path(&format!("{name}.crt"))
    }

    /// A certificate `name` signed by CA `ca`, for `usage` (`serverAuth`, `clientAuth`) and
    /// the subject alternative names `sans` (`DNS:localhost`, `IP:127.0.0.1`).
    pub fn issue(&self, name: &str, ca: &str, usage: &str, sans: &[&str]) -> Issued {
        let san = if sans.is_empty() {
            String::new()
        } else {
            format!("subjectAltName={}", sans.join(","))
        };
        std::fs::write(
            self.path(&format!("{name}.ext")),
            format!("basicConstraints=critical,CA:FALSE\nextendedKeyUsage={usage}\n{san}\n"),
        )
        .unwrap();
        self.openssl(&format!(
            "req -new {NEW_KEY} -keyout {name}.key -out {name}.csr -subj /CN={name}"
        ));
        self.openssl(&format!(
            "x509 -req -in {name}.csr -CA {ca}.crt -CAkey {ca}.key -CAcreateserial -days 2 -extfile {name}.ext -out {name}.crt"
        ));
        Issued {
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
        }
    }

    /// A server certificate from `ca` for loopback and `names`.
    pub fn server(&self, name: &str, ca: &str) -> Issued {
        self.issue(
            name,
            ca,
            "serverAuth",
            &["DNS:localhost", "IP:127.0.0.1", "DNS:envoy-gateway"],
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `openssl` with `args` (split on whitespace) in the directory.
    fn openssl(&self, args: &str) {
        let output = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Replaces `to`'s certificate and key by `from`'s the way a renewal does: written beside
/// them, then renamed over them.
pub fn renew(from: &Issued, to: &Issued) {
    for (source, target) in [(&from.cert, &to.cert), (&from.key, &to.key)] {
        let staged = target.with_extension("new");
        std::fs::copy(source, &staged).unwrap();
        std::fs::rename(&staged, target).unwrap();
    }
}

fn certificates(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A client configuration trusting `ca`, presenting `identity` if given, offering h2.
pub fn client_config(ca: &Path, identity: Option<&Issued>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(ca) {
        roots.add(certificate).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(issued) => builder
            .with_client_auth_cert(
                certificates(&issued.cert),
                PrivateKeyDer::from_pem_file(&issued.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A gRPC channel over TLS to `addr` (verified as `localhost`), or the error of connecting.
pub async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let config = Arc::new(client_config(ca, identity));
    let connector = tower::service_fn(move |_: Uri| {
        let config = config.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .connect_with_connector(connector)
        .await
}

/// The certificate `addr` presents in a TLS handshake (verified against `ca`), as DER.
pub async fn served_certificate(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<&Issued>,
) -> Vec<u8> {
    let config = Arc::new(client_config(ca, identity));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The DER of the first certificate in a PEM file.
pub fn der(path: &Path) -> Vec<u8> {
    certificates(path)[0].to_vec()
}
