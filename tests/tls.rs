//! TLS and mutual TLS on the gRPC port, with certificates made by `openssl` in the test: a
//! client without a certificate (or with one from another CA, or without the required name) is
//! refused at the handshake, and a renewed certificate is served to new connections without a
//! restart.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use common::pki::{self, Issued, Pki};
use common::{Setup, TestServer, one, request, start_with};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tollgate::tls::ServerTlsFiles;

const CONFIG: &str = "domain: api\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 3}\n";

async fn serve(files: ServerTlsFiles) -> TestServer {
    let setup = Setup {
        grpc_tls: Some(files),
        ..Setup::default()
    };
    start_with(CONFIG, setup).await
}

fn files(server: &Issued, client_ca: Option<&Pki>, client_san: Option<&str>) -> ServerTlsFiles {
    ServerTlsFiles {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: client_ca.map(|pki| pki.path("ca.crt")),
        client_san: client_san.map(str::to_owned),
    }
}

/// Whether a call over TLS with `identity` is answered.
async fn answered(s: &TestServer, pki: &Pki, identity: Option<&Issued>) -> bool {
    let Ok(channel) = pki::tls_channel(s.grpc, &pki.path("ca.crt"), identity).await else {
        return false;
    };
    RateLimitServiceClient::new(channel)
        .should_rate_limit(request("api", one("user", "u")))
        .await
        .is_ok()
}

#[tokio::test]
async fn tls_is_served_and_a_renewed_certificate_is_picked_up() {
    let pki = Pki::new();
    let server = pki.server("server", "ca");
    let s = serve(files(&server, None, None)).await;
    assert!(answered(&s, &pki, None).await);
    let ca = pki.path("ca.crt");
    assert_eq!(
        pki::served_certificate(s.grpc, &ca, None).await,
        pki::der(&server.cert)
    );

    let renewed = pki.server("renewed", "ca");
    pki::renew(&renewed, &server);
    let expected = pki::der(&renewed.cert);
    let mut served = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        served = pki::served_certificate(s.grpc, &ca, None).await;
        if served == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, expected, "the renewed certificate is served");
    assert!(answered(&s, &pki, None).await);
    s.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_of_its_ca() {
    let pki = Pki::new();
    let server = pki.server("server", "ca");
    let envoy = pki.issue("envoy", "ca", "clientAuth", &["DNS:envoy"]);
    pki.authority("other-ca");
    let stranger = pki.issue("stranger", "other-ca", "clientAuth", &["DNS:envoy"]);
    let s = serve(files(&server, Some(&pki), None)).await;
    assert!(
        answered(&s, &pki, Some(&envoy)).await,
        "a certificate of the CA"
    );
    assert!(!answered(&s, &pki, None).await, "no certificate");
    assert!(
        !answered(&s, &pki, Some(&stranger)).await,
        "another CA's certificate"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_required_name_refuses_certificates_without_it() {
    let pki = Pki::new();
    let server = pki.server("server", "ca");
    let envoy = pki.issue(
        "envoy",
        "ca",
        "clientAuth",
        &["DNS:envoy.envoy-gateway-system"],
    );
    let other = pki.issue("other", "ca", "clientAuth", &["DNS:someone-else"]);
    let s = serve(files(
        &server,
        Some(&pki),
        Some("envoy.envoy-gateway-system"),
    ))
    .await;
    assert!(answered(&s, &pki, Some(&envoy)).await);
    assert!(!answered(&s, &pki, Some(&other)).await);
    s.stop().await;
}

#[tokio::test]
async fn unusable_tls_files_are_startup_errors_naming_flag_and_file() {
    let pki = Pki::new();
    let server = pki.server("server", "ca");
    let other = pki.server("other", "ca");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("limits.yaml"), CONFIG).unwrap();
    let mismatched = ServerTlsFiles {
        key: other.key.clone(),
        ..files(&server, None, None)
    };
    let missing = ServerTlsFiles {
        client_ca: Some(dir.path().join("missing-ca.crt")),
        ..files(&server, None, None)
    };
    for (tls, words) in [
        (
            mismatched,
            vec![
                "--grpc-tls-key",
                "other.key",
                "not the key of --grpc-tls-cert",
            ],
        ),
        (
            missing,
            vec!["--grpc-tls-client-ca", "missing-ca.crt", "cannot read it"],
        ),
    ] {
        let setup = Setup {
            grpc_tls: Some(tls),
            ..Setup::default()
        };
        let config = common::app_config(dir.path().to_path_buf(), &setup);
        let clock = std::sync::Arc::new(tollgate::clock::ManualClock::at(common::T0));
        let error = config.build(clock).await.unwrap_err().to_string();
        for word in words {
            assert!(error.contains(word), "{error}");
        }
    }
}
