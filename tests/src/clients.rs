//! Clients for end-to-end tests against a [`TestGateway`](crate::gateway::TestGateway): a rustls
//! client (with or without a client certificate, any SNI, TLS 1.2 or 1.3, session resumption
//! through a shared `ClientConfig`) speaking minimal HTTP/1.1, a plaintext HTTP/1.1 client, and
//! `openssl s_client` / `curl` runs with a deadline.
//!
//! ```no_run
//! # async fn demo(gateway: &tollgate_tests::gateway::TestGateway) {
//! use tollgate_tests::clients::{Identity, TlsClient, Versions};
//!
//! let client = TlsClient::new(&gateway.pki, Versions::Tls13, Identity::Chain);
//! let reply = client.get(gateway.addr("https"), "localhost", "/").await.unwrap();
//! assert_eq!(reply.status, 200);
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, HandshakeKind, ProtocolVersion, RootCertStore,
    SignatureScheme, SupportedProtocolVersion, version,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::pki::PkiFiles;

/// How long one client exchange (connect, request, whole response) may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `openssl` or `curl` run may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Which protocol versions a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 only.
    Tls13,
    /// TLS 1.2 only.
    Tls12,
}

impl Versions {
    /// Both, 1.3 first.
    pub const BOTH: [Versions; 2] = [Versions::Tls13, Versions::Tls12];

    fn rustls(self) -> &'static [&'static SupportedProtocolVersion] {
        static TLS13: [&SupportedProtocolVersion; 1] = [&version::TLS13];
        static TLS12: [&SupportedProtocolVersion; 1] = [&version::TLS12];
        match self {
            Versions::Tls13 => &TLS13,
            Versions::Tls12 => &TLS12,
        }
    }

    /// OpenSSL's name, as in the access log.
    pub fn name(self) -> &'static str {
        match self {
            Versions::Tls13 => "TLSv1.3",
            Versions::Tls12 => "TLSv1.2",
        }
    }
}

/// What a client presents when asked for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Nothing: the client has no certificate.
    Anonymous,
    /// The PKI's client chain (`client-chain.pem`: leaf then intermediate) with its key.
    Chain,
    /// The client chain paired with an unrelated key, so its CertificateVerify signature is wrong.
    WrongKey,
}

/// A client certificate source that records the CA names of every CertificateRequest.
#[derive(Debug)]
pub struct RecordingResolver {
    key: Option<Arc<CertifiedKey>>,
    requests: Mutex<Vec<Vec<Vec<u8>>>>,
}

impl RecordingResolver {
    /// The CA names (DER `Name`s) of each CertificateRequest received so far, in order; one entry
    /// per request, empty when it named no CAs.
    pub fn requests(&self) -> Vec<Vec<Vec<u8>>> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesClientCert for RecordingResolver {
    fn resolve(&self, hints: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hints.iter().map(|hint| hint.to_vec()).collect());
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// Accepts any server certificate (for SNIs the test server certificate does not name), still
/// checking the handshake signatures.
#[derive(Debug)]
struct AnyServerCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Reads every certificate of a PEM file.
pub fn read_certificates(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Reads the private key of a PEM file.
pub fn read_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A rustls client. Its `ClientConfig` (and so its session store) is shared by every connection
/// it makes: a second connection to the same server name offers the first one's session.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// The config every connection uses.
    pub config: Arc<ClientConfig>,
    /// What the client was asked for.
    pub resolver: Arc<RecordingResolver>,
}

/// What one request over TLS gave.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The response status.
    pub status: u16,
    /// Response headers, names lower-case, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Full or resumed (`None` on plaintext).
    pub handshake: Option<HandshakeKind>,
    /// The negotiated version (`None` on plaintext).
    pub version: Option<ProtocolVersion>,
}

impl Reply {
    /// The first value of response header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (the echo upstream's answer); panics otherwise.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A request header as the echo upstream received it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

impl TlsClient {
    /// A client trusting the PKI's root, offering `versions` and ALPN `http/1.1`.
    pub fn new(pki: &PkiFiles, versions: Versions, identity: Identity) -> TlsClient {
        Self::build(pki, versions, identity, false)
    }

    /// Like [`TlsClient::new`], but accepting any server certificate (for other SNIs).
    pub fn any_server(pki: &PkiFiles, versions: Versions, identity: Identity) -> TlsClient {
        Self::build(pki, versions, identity, true)
    }

    fn build(pki: &PkiFiles, versions: Versions, identity: Identity, any: bool) -> TlsClient {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = match identity {
            Identity::Anonymous => None,
            Identity::Chain => Some(
                CertifiedKey::from_der(
                    read_certificates(&pki.client_chain),
                    read_key(&pki.client_key),
                    &provider,
                )
                .expect("client chain and key match"),
            ),
            Identity::WrongKey => {
                let other = rcgen::KeyPair::generate().expect("key generation");
                let other = PrivateKeyDer::from_pem_slice(other.serialize_pem().as_bytes())
                    .expect("generated key parses");
                let signer = provider
                    .key_provider
                    .load_private_key(other)
                    .expect("signing key");
                Some(CertifiedKey::new(
                    read_certificates(&pki.client_chain),
                    signer,
                ))
            }
        };
        let resolver = Arc::new(RecordingResolver {
            key: key.map(Arc::new),
            requests: Mutex::new(Vec::new()),
        });
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions.rustls())
            .expect("protocol versions");
        let builder = if any {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(
                    signature_algorithms(&provider),
                )))
        } else {
            let mut roots = RootCertStore::empty();
            for root in read_certificates(&pki.root) {
                roots.add(root).expect("root CA");
            }
            builder.with_root_certificates(roots)
        };
        let mut config = builder.with_client_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsClient {
            config: Arc::new(config),
            resolver,
        }
    }

    /// Connects and completes the client's side of the handshake.
    pub async fn connect(&self, addr: SocketAddr, sni: &str) -> io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(sni.to_owned())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }

    /// `GET path` with `Host: sni` on a new connection, reading the whole response (which also
    /// takes in TLS 1.3 session tickets).
    pub async fn get(&self, addr: SocketAddr, sni: &str, path: &str) -> io::Result<Reply> {
        self.request(addr, sni, "GET", path, &[]).await
    }

    /// One request on a new connection, with extra headers; the connection is closed after it.
    pub async fn request(
        &self,
        addr: SocketAddr,
        sni: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Reply> {
        let exchange = async {
            let mut stream = self.connect(addr, sni).await?;
            let raw = exchange(&mut stream, sni, method, path, headers).await?;
            let (_, conn) = stream.get_ref();
            let mut reply = parse_response(&raw)?;
            reply.handshake = conn.handshake_kind();
            reply.version = conn.protocol_version();
            Ok(reply)
        };
        deadline(exchange).await
    }
}

/// `GET path` over plaintext HTTP/1.1.
pub async fn plain_get(addr: SocketAddr, host: &str, path: &str) -> io::Result<Reply> {
    deadline(async {
        let mut tcp = TcpStream::connect(addr).await?;
        let raw = exchange(&mut tcp, host, "GET", path, &[]).await?;
        parse_response(&raw)
    })
    .await
}

async fn deadline<T>(work: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(CLIENT_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "client timed out")))
}

/// Writes one `Connection: close` request and reads until the server closes.
async fn exchange<S>(
    stream: &mut S,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw).await {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete response is fine here.
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof && complete(&raw) => {}
        Err(err) => return Err(err),
    }
    Ok(raw)
}

/// Whether `raw` holds a whole response.
fn complete(raw: &[u8]) -> bool {
    parse_response(raw).is_ok()
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Parses an HTTP/1.1 response: status, headers, and a body delimited by `content-length`,
/// chunked encoding, or the end of the connection.
pub fn parse_response(raw: &[u8]) -> io::Result<Reply> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(format!("no response head in {} bytes", raw.len())))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = find("content-length") {
        let length: usize = length.parse().map_err(|_| bad("bad content-length"))?;
        if rest.len() < length {
            return Err(bad("truncated body"));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body,
        handshake: None,
        version: None,
    })
}

fn dechunk(mut rest: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn signature_algorithms(provider: &CryptoProvider) -> WebPkiSupportedAlgorithms {
    provider.signature_verification_algorithms
}

/// What a command-line tool run gave.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl ToolOutput {
    /// Stdout then stderr, for assertion messages.
    pub fn all(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `program` with `args`, writing `stdin` to it and then closing it, under
/// [`TOOL_TIMEOUT`] (the child is killed when it runs over). Panics when it cannot start or
/// times out.
pub async fn run_tool(program: &str, args: &[String], stdin: &[u8]) -> ToolOutput {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    let feed = async move {
        let _ = input.write_all(&stdin).await;
        drop(input);
    };
    let (_, output) = tokio::join!(
        feed,
        tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
    );
    let output = match output {
        Ok(output) => output.unwrap_or_else(|err| panic!("{program} failed to run: {err}")),
        Err(_) => panic!("{program} {args:?} did not finish within {TOOL_TIMEOUT:?}"),
    };
    ToolOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `openssl s_client -connect <addr> <args>`, with `stdin` sent after the handshake. With an
/// empty `stdin` the client closes right after the handshake; otherwise it is sent with
/// `-ign_eof`, so the client reads until the server closes (send `Connection: close`).
pub async fn s_client(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> ToolOutput {
    let mut full = vec![
        "s_client".to_owned(),
        "-connect".to_owned(),
        addr.to_string(),
    ];
    if !stdin.is_empty() {
        full.push("-ign_eof".to_owned());
    }
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    run_tool("openssl", &full, stdin).await
}

/// An HTTP/1.1 `GET` for s_client's stdin.
pub fn http_get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The CA names s_client printed under "Acceptable client certificate CA names", in order;
/// `None` when it printed "No client certificate CA names sent".
pub fn s_client_ca_names(output: &str) -> Option<Vec<String>> {
    if output.contains("No client certificate CA names sent") {
        return None;
    }
    let (_, after) = output.split_once("Acceptable client certificate CA names\n")?;
    Some(
        after
            .lines()
            .take_while(|line| !line.starts_with("Requested Signature") && !line.starts_with("---"))
            .filter(|line| !line.starts_with("Client Certificate Types"))
            .map(str::to_owned)
            .collect(),
    )
}

/// `New` or `Reused`: the start of s_client's session summary line.
pub fn s_client_session(output: &str) -> Option<&'static str> {
    output.lines().find_map(|line| {
        if line.starts_with("Reused, ") {
            Some("Reused")
        } else if line.starts_with("New, ") {
            Some("New")
        } else {
            None
        }
    })
}

/// `curl https://localhost:<port><path>` trusting the PKI's root, with `args` added
/// (`--cert ... --key ...`); prints the body on stdout.
pub async fn curl(pki: &PkiFiles, addr: SocketAddr, path: &str, args: &[&str]) -> ToolOutput {
    let port = addr.port();
    let mut full: Vec<String> = vec![
        "--silent".into(),
        "--show-error".into(),
        "--http1.1".into(),
        "--max-time".into(),
        "15".into(),
        "--cacert".into(),
        pki.root.display().to_string(),
        "--resolve".into(),
        format!("localhost:{port}:{}", addr.ip()),
    ];
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    full.push(format!("https://localhost:{port}{path}"));
    run_tool("curl", &full, b"").await
}
