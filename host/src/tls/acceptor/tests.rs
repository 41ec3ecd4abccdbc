use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, HandshakeKind, RootCertStore, SignatureScheme, SupportedProtocolVersion, version,
};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::*;
use crate::tls::chain_check::{ClientVerify, TrustAnchors};
use crate::tls::listener::ServerCertificate;
use crate::tls::test_pki::{Pki, key_der};

/// A client certificate source that records the CA names each CertificateRequest carried.
#[derive(Debug)]
struct RecordingClientCert {
    key: Option<Arc<CertifiedKey>>,
    hints: Mutex<Vec<Vec<Vec<u8>>>>,
}

impl ResolvesClientCert for RecordingClientCert {
    fn resolve(&self, hints: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.hints
            .lock()
            .unwrap()
            .push(hints.iter().map(|h| h.to_vec()).collect());
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

struct Setup {
    pki: Pki,
    listener: Arc<ListenerTls>,
    tcp: TcpListener,
}

impl Setup {
    async fn new(timeout: Duration) -> Self {
        let pki = Pki::new();
        let cert = ServerCertificate {
            server_names: Vec::new(),
            chain: vec![pki.server.der().clone()],
            key: key_der(&pki.server_key),
        };
        let listener = Arc::new(ListenerTls::new(vec![cert], None, timeout).unwrap());
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self { pki, listener, tcp }
    }

    /// Accepts one connection with `policy`, answers `ok` and closes.
    async fn serve(&self, policy: TlsPolicy) -> JoinHandle<Result<TlsFacts, HandshakeError>> {
        let listener = self.listener.clone();
        let (tcp, _) = self.tcp.accept().await.unwrap();
        tokio::spawn(async move {
            let (mut stream, facts) =
                accept(&listener, tcp, async |_| Ok::<_, Infallible>(policy)).await?;
            stream.write_all(b"ok").await?;
            stream.shutdown().await?;
            Ok(facts)
        })
    }

    fn client(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        chain: Option<Vec<CertificateDer<'static>>>,
    ) -> (Arc<ClientConfig>, Arc<RecordingClientCert>) {
        let mut roots = RootCertStore::empty();
        roots.add(self.pki.root.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = chain.map(|chain| {
            Arc::new(CertifiedKey::from_der(chain, key_der(&self.pki.leaf_key), &provider).unwrap())
        });
        let recorder = Arc::new(RecordingClientCert {
            key,
            hints: Mutex::new(Vec::new()),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(recorder.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        (Arc::new(config), recorder)
    }

    /// One connection: returns the server's facts and how the client saw the handshake.
    async fn connect(
        &self,
        client: &Arc<ClientConfig>,
        policy: TlsPolicy,
    ) -> (TlsFacts, HandshakeKind) {
        let addr = self.tcp.local_addr().unwrap();
        let connector = TlsConnector::from(client.clone());
        let client_side = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut stream = connector.connect(name, tcp).await.unwrap();
            let mut body = Vec::new();
            // Reading to the end also takes in the TLS 1.3 session tickets.
            stream.read_to_end(&mut body).await.unwrap();
            assert_eq!(body, b"ok");
            stream.get_ref().1.handshake_kind().unwrap()
        };
        let (server, kind) = tokio::join!(
            async { self.serve(policy).await.await.unwrap().unwrap() },
            client_side
        );
        (server, kind)
    }
}

/// The chain the facts report, as DER.
fn presented(facts: &TlsFacts) -> Option<Vec<CertificateDer<'static>>> {
    facts
        .client_chain
        .as_ref()
        .map(|chain| chain.certificates().to_vec())
}

const TIMEOUT: Duration = Duration::from_secs(5);
const BOTH: [&[&SupportedProtocolVersion]; 2] = [&[&version::TLS13], &[&version::TLS12]];

fn requesting(ca_certs: Option<TrustAnchors>) -> TlsPolicy {
    TlsPolicy {
        request_client_certificate: true,
        ca_certs,
        disable_session_reuse: false,
    }
}

#[tokio::test]
async fn not_requested_gives_no_chain_and_none() {
    let s = Setup::new(TIMEOUT).await;
    for versions in BOTH {
        let (client, recorder) = s.client(versions, Some(s.pki.client_chain()));
        let (facts, _) = s.connect(&client, TlsPolicy::default()).await;
        assert!(facts.client_chain.is_none());
        assert_eq!(facts.client_verify, ClientVerify::None);
        assert!(
            recorder.hints.lock().unwrap().is_empty(),
            "no CertificateRequest"
        );
        assert_eq!(facts.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(facts.version, protocol_name(versions[0].version));
        assert_ne!(facts.cipher, "unknown");
    }
}

#[tokio::test]
async fn requested_chain_without_anchors_is_kept_and_fails_local_issuer() {
    let s = Setup::new(TIMEOUT).await;
    for versions in BOTH {
        let (client, recorder) = s.client(versions, Some(s.pki.client_chain()));
        let (facts, _) = s.connect(&client, requesting(None)).await;
        assert_eq!(presented(&facts), Some(s.pki.client_chain()));
        assert_eq!(
            facts.client_verify.to_string(),
            "FAILED:unable to get local issuer certificate"
        );
        // No ca_certs: the CertificateRequest carries no CA names.
        assert_eq!(*recorder.hints.lock().unwrap(), vec![Vec::<Vec<u8>>::new()]);
    }
}

#[tokio::test]
async fn ca_certs_are_sent_in_order_and_verify_succeeds() {
    let s = Setup::new(TIMEOUT).await;
    let pem = format!("{}{}", s.pki.intermediate.pem(), s.pki.root.pem());
    let anchors = TrustAnchors::from_pem(&pem).unwrap();
    let expected: Vec<Vec<u8>> = anchors
        .distinguished_names()
        .iter()
        .map(|dn| dn.as_ref().to_vec())
        .collect();
    for versions in BOTH {
        let (client, recorder) = s.client(versions, Some(s.pki.client_chain()));
        let (facts, _) = s.connect(&client, requesting(Some(anchors.clone()))).await;
        assert_eq!(facts.client_verify, ClientVerify::Success);
        assert_eq!(*recorder.hints.lock().unwrap(), vec![expected.clone()]);
    }
    assert_eq!(
        anchors.subject_names(),
        [
            "CN=Demo Intermediate CA, O=Tollgate",
            "CN=Demo Root CA, O=Tollgate"
        ]
    );
}

#[tokio::test]
async fn listener_client_ca_is_used_without_ca_certs() {
    let pki = Pki::new();
    let cert = ServerCertificate {
        server_names: Vec::new(),
        chain: vec![pki.server.der().clone()],
        key: key_der(&pki.server_key),
    };
    let client_ca = TrustAnchors::from_pem(&pki.root.pem()).unwrap();
    let s = Setup {
        listener: Arc::new(ListenerTls::new(vec![cert], Some(client_ca), TIMEOUT).unwrap()),
        tcp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        pki,
    };
    let (client, recorder) = s.client(&[&version::TLS13], Some(s.pki.client_chain()));
    let (facts, _) = s.connect(&client, requesting(None)).await;
    assert_eq!(facts.client_verify, ClientVerify::Success);
    // The listener's bundle is a trust store only: no names are sent for it.
    assert_eq!(*recorder.hints.lock().unwrap(), vec![Vec::<Vec<u8>>::new()]);
}

#[tokio::test]
async fn requested_but_not_sent_completes_with_none() {
    let s = Setup::new(TIMEOUT).await;
    for versions in BOTH {
        let (client, recorder) = s.client(versions, None);
        let (facts, _) = s.connect(&client, requesting(None)).await;
        assert!(facts.client_chain.is_none());
        assert_eq!(facts.client_verify, ClientVerify::None);
        assert_eq!(recorder.hints.lock().unwrap().len(), 1, "was asked");
    }
}

#[tokio::test]
async fn session_resumes_with_reuse_on_and_keeps_the_chain() {
    let s = Setup::new(TIMEOUT).await;
    let anchors = TrustAnchors::from_pem(&s.pki.root.pem()).unwrap();
    for versions in BOTH {
        let (client, _) = s.client(versions, Some(s.pki.client_chain()));
        let policy = requesting(Some(anchors.clone()));
        let (first, kind) = s.connect(&client, policy.clone()).await;
        assert_eq!(kind, HandshakeKind::Full);
        let (second, kind) = s.connect(&client, policy).await;
        assert_eq!(kind, HandshakeKind::Resumed, "{versions:?}");
        assert_eq!(presented(&second), presented(&first));
        assert_eq!(presented(&second), Some(s.pki.client_chain()));
        assert_eq!(second.client_verify, ClientVerify::Success);
    }
}

#[tokio::test]
async fn disable_session_reuse_never_resumes() {
    let s = Setup::new(TIMEOUT).await;
    for versions in BOTH {
        let (client, _) = s.client(versions, Some(s.pki.client_chain()));
        let policy = TlsPolicy {
            disable_session_reuse: true,
            ..requesting(None)
        };
        for _ in 0..3 {
            let (facts, kind) = s.connect(&client, policy.clone()).await;
            assert_eq!(kind, HandshakeKind::Full, "{versions:?}");
            assert_eq!(presented(&facts), Some(s.pki.client_chain()));
        }
    }
}

#[tokio::test]
async fn session_from_another_policy_is_not_resumed() {
    let s = Setup::new(TIMEOUT).await;
    for versions in BOTH {
        let (client, _) = s.client(versions, Some(s.pki.client_chain()));
        let (_, kind) = s.connect(&client, TlsPolicy::default()).await;
        assert_eq!(kind, HandshakeKind::Full);
        // The certificate is now wanted: a full handshake must ask for it.
        let (facts, kind) = s.connect(&client, requesting(None)).await;
        assert_eq!(kind, HandshakeKind::Full, "{versions:?}");
        assert_eq!(presented(&facts), Some(s.pki.client_chain()));
    }
}

#[tokio::test]
async fn wrong_certificate_verify_signature_fails_the_handshake() {
    let s = Setup::new(TIMEOUT).await;
    for versions in BOTH {
        let (mut client, _) = s.client(versions, None);
        // The client's certificate with somebody else's key: its CertificateVerify is wrong.
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let other_key = rcgen::KeyPair::generate().unwrap();
        let signer = provider
            .key_provider
            .load_private_key(key_der(&other_key))
            .unwrap();
        let wrong = Arc::new(RecordingClientCert {
            key: Some(Arc::new(CertifiedKey::new(s.pki.client_chain(), signer))),
            hints: Mutex::new(Vec::new()),
        });
        Arc::make_mut(&mut client).client_auth_cert_resolver = wrong;
        let addr = s.tcp.local_addr().unwrap();
        let client_side = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut stream = TlsConnector::from(client).connect(name, tcp).await?;
            stream.read_to_end(&mut Vec::new()).await
        });
        let server = s.serve(requesting(None)).await.await.unwrap();
        assert!(
            matches!(server, Err(HandshakeError::Tls(_))),
            "{versions:?}: {:?}",
            server.map(|f| f.client_verify)
        );
        assert!(client_side.await.unwrap().is_err());
    }
}

#[tokio::test]
async fn certificate_phase_sees_the_client_hello_and_its_error_aborts() {
    let s = Setup::new(TIMEOUT).await;
    let (client, _) = s.client(&[&version::TLS13], None);
    let addr = s.tcp.local_addr().unwrap();
    let client_side = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        TlsConnector::from(client).connect(name, tcp).await
    });
    let (tcp, _) = s.tcp.accept().await.unwrap();
    let mut seen = None;
    let result = accept(&s.listener, tcp, async |hello| {
        seen = Some(hello.clone());
        Err::<TlsPolicy, _>("plugin trapped")
    })
    .await;
    assert!(matches!(
        result,
        Err(HandshakeError::CertificatePhase(ref err)) if err.to_string() == "plugin trapped"
    ));
    let seen = seen.unwrap();
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    assert_eq!(seen.alpn, vec![b"http/1.1".to_vec()]);
    assert!(client_side.await.unwrap().is_err());
}

#[tokio::test]
async fn handshake_times_out_against_a_silent_client() {
    let s = Setup::new(Duration::from_millis(200)).await;
    let addr = s.tcp.local_addr().unwrap();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = s.tcp.accept().await.unwrap();
    let started = tokio::time::Instant::now();
    let result = accept(&s.listener, tcp, async |_| {
        Ok::<_, Infallible>(TlsPolicy::default())
    })
    .await;
    assert!(matches!(result, Err(HandshakeError::Timeout)));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn garbage_bytes_give_an_error_not_a_panic() {
    let s = Setup::new(TIMEOUT).await;
    let addr = s.tcp.local_addr().unwrap();
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
        &[0xff; 64][..],
    ] {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(garbage).await.unwrap();
        let (tcp, _) = s.tcp.accept().await.unwrap();
        let result = accept(&s.listener, tcp, async |_| {
            Ok::<_, Infallible>(TlsPolicy::default())
        })
        .await;
        match result {
            Err(HandshakeError::Tls(_) | HandshakeError::Io(_)) => {}
            other => panic!("unexpected {:?}", other.map(|(_, f)| f)),
        }
    }
}

#[tokio::test]
async fn client_closing_early_is_an_io_error() {
    let s = Setup::new(TIMEOUT).await;
    let addr = s.tcp.local_addr().unwrap();
    drop(TcpStream::connect(addr).await.unwrap());
    let (tcp, _) = s.tcp.accept().await.unwrap();
    let result = accept(&s.listener, tcp, async |_| {
        Ok::<_, Infallible>(TlsPolicy::default())
    })
    .await;
    assert!(matches!(result, Err(HandshakeError::Io(_))));
}
