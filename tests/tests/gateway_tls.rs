//! The client-TLS contract (`spec/client-tls.md`) end to end: every acceptance case of §6, and
//! the handshake's failure modes, through a running gateway over real sockets, with a rustls
//! client and, where the spec names what they show, `openssl s_client` and `curl`.
//!
//! Each test makes its own PKI (root → intermediate → client leaf, and a server certificate for
//! `localhost`), so a `ca_certs` value can be written into the plugin config before the gateway
//! starts; configs name its files as `{{pki}}/...`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use rustls::HandshakeKind;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_tests::clients::{
    self, Identity, TlsClient, Versions, curl, http_get, plain_get, s_client, s_client_ca_names,
    s_client_session,
};
use tollgate_tests::gateway::{TestGateway, read_log};
use tollgate_tests::{PkiFiles, TestPki};

const CERT_ONLY: &str = "certificate";
const CHAIN_PHASES: &str = "rewrite, access, balancer, header_filter, body_filter, log";
const VERIFY_PHASES: &str = "rewrite, access, balancer";
const LOCAL_ISSUER: &str = "FAILED:unable to get local issuer certificate";

/// A PKI of this test's own, written to a temp dir.
struct Pki {
    files: PkiFiles,
    /// Intermediate then root, as PEM: `ca_certs` of case 4.
    ca_bundle: String,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let files = pki.write(dir.path()).unwrap();
        Pki {
            files,
            ca_bundle: pki.ca_bundle_pem(),
            dir,
        }
    }

    /// The client's bundle file (leaf then intermediate), byte for byte.
    fn client_chain(&self) -> String {
        std::fs::read_to_string(&self.files.client_chain).unwrap()
    }

    /// `s_client` arguments for TLS 1.2 presenting leaf + intermediate: s_client sends only the
    /// first certificate of `-cert`, so the intermediate goes in `-cert_chain`.
    fn s_client_tls12_with_chain(&self) -> Vec<String> {
        let mut args: Vec<String> = ["-tls1_2", "-servername", "localhost"]
            .map(String::from)
            .to_vec();
        for (flag, file) in [
            ("-cert", &self.files.client_leaf),
            ("-cert_chain", &self.files.intermediate),
            ("-key", &self.files.client_key),
        ] {
            args.push(flag.to_string());
            args.push(self.path(file));
        }
        args
    }

    fn path(&self, file: &std::path::Path) -> String {
        file.display().to_string()
    }

    /// Starts a gateway: a TLS listener `https` (this PKI's server certificate), the echo
    /// service, then `rest` (routes, plugins). `listener_extra` goes into the listener's table.
    async fn gateway(&self, listener_extra: &str, rest: &str) -> TestGateway {
        let listener = format!(
            "{listener_extra}\n[[listeners.certificates]]\n\
             cert = \"{{{{pki}}}}/server.pem\"\nkey = \"{{{{pki}}}}/server.key\"\n"
        );
        self.start("https", &listener, rest).await
    }

    /// Starts a gateway with one listener, `name`, whose table ends with `listener`; `rest` may
    /// add more.
    async fn start(&self, name: &str, listener: &str, rest: &str) -> TestGateway {
        let config = format!(
            r#"
[[listeners]]
name = "{name}"
address = "127.0.0.1:0"
{listener}

[[services]]
name = "echo"
targets = ["{{{{echo}}}}"]

{rest}
"#
        )
        .replace("{{pki}}", &self.dir.path().display().to_string());
        TestGateway::start(&config).await
    }
}

/// A JSON value as a TOML inline value (serde_json's string escapes are valid TOML).
fn toml_inline(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{} = {}", Value::String(k.clone()), toml_inline(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Null => panic!("TOML has no null"),
        other => other.to_string(),
    }
}

/// A scripted plugin instance; `extra` is more keys of its table (`route = "a"`,
/// `fail_open = true`).
fn scripted(name: &str, extra: &str, actions: Value) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\npath = \"{{{{guests}}}}/scripted.wasm\"\n{extra}\nconfig = {}\n\n",
        toml_inline(&json!({ "actions": actions }))
    )
}

const DEFAULT_ROUTE: &str = "[[routes]]\nname = \"default\"\nservice = \"echo\"\n\n";

/// Waits (up to 10 s) for the access log line of the request whose URI was `uri`.
async fn log_entry(gateway: &TestGateway, uri: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines = read_log(&gateway.access_log());
        let found = lines
            .into_iter()
            .find(|entry| entry["request"]["uri"] == uri);
        if let Some(entry) = found {
            return entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no access log line for {uri}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every access log line so far.
fn log_lines(gateway: &TestGateway) -> Vec<Value> {
    read_log(&gateway.access_log())
}

fn client_verify(entry: &Value) -> &str {
    entry["request"]["tls"]["client_verify"].as_str().unwrap()
}

fn decode(header: &str) -> String {
    percent_encoding::percent_decode_str(header)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

fn wrong_phase(phase: &str, allowed: &str) -> Value {
    json!({ "err": format!("function cannot be called in {phase} phase (only in: {allowed})") })
}

fn ok(value: Option<&str>) -> Value {
    json!({ "ok": value })
}

/// The chain as a rewrite-phase plugin copies it into `x-chain` for the upstream.
fn chain_to_header(name: &str, extra: &str, certificate: Value) -> String {
    scripted(
        name,
        extra,
        json!({
            "certificate": certificate,
            "rewrite": [{ "call": "get_full_client_certificate_chain", "to_header": "x-chain" }],
        }),
    )
}

fn upstream_chain(reply: &clients::Reply) -> Option<String> {
    reply.upstream_header("x-chain").as_deref().map(decode)
}

/// §6.1: each of the four functions in each of the seven phases, from a real wasm plugin through
/// the running gateway. The results travel: certificate → context → rewrite request header;
/// rewrite and access → upstream request headers; balancer → context → header_filter response
/// header; header_filter → response header; body_filter and log → the phase's error (the plugin
/// is fail-open, so the response still goes out), which the access log's `plugin_errors` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_matrix_every_cell_through_the_gateway() {
    let pki = Pki::new();
    let report = |to: &str, name: &str| json!({ "call": "client_tls_report", to: name });
    let plugin = scripted(
        "matrix",
        "fail_open = true",
        json!({
            "certificate": [report("to_context", "r-certificate")],
            "rewrite": [
                report("to_header", "x-r-rewrite"),
                { "call": "context_get", "key": "r-certificate", "to_header": "x-r-certificate" },
            ],
            "access": [report("to_header", "x-r-access")],
            "balancer": [report("to_context", "r-balancer")],
            "header_filter": [
                report("to_response_header", "x-r-header-filter"),
                { "call": "context_get", "key": "r-balancer", "to_response_header": "x-r-balancer" },
            ],
            "body_filter": [{ "call": "client_tls_report", "fail": true }],
            "log": [{ "call": "client_tls_report", "fail": true }],
        }),
    );
    let gateway = pki.gateway("", &format!("{DEFAULT_ROUTE}{plugin}")).await;
    let chain = pki.client_chain();
    let expected = |phase: &str| -> Value {
        match phase {
            "certificate" => json!([
                ok(None),
                ok(None),
                wrong_phase(phase, CHAIN_PHASES),
                wrong_phase(phase, VERIFY_PHASES)
            ]),
            "rewrite" | "access" | "balancer" => json!([
                wrong_phase(phase, CERT_ONLY),
                wrong_phase(phase, CERT_ONLY),
                ok(Some(&chain)),
                ok(None)
            ]),
            _ => json!([
                wrong_phase(phase, CERT_ONLY),
                wrong_phase(phase, CERT_ONLY),
                ok(Some(&chain)),
                wrong_phase(phase, VERIFY_PHASES)
            ]),
        }
    };
    let parse = |text: &str| -> Value { serde_json::from_str(text).unwrap() };

    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Chain);
        let uri = format!("/matrix?v={}", versions.name());
        let reply = client
            .get(gateway.addr("https"), "localhost", &uri)
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{versions:?}");
        let echo = reply.json();
        // Certificate phase: stored verbatim in the context, copied verbatim by rewrite.
        let certificate = echo["headers"]["x-r-certificate"].as_str().unwrap();
        assert_eq!(parse(certificate), expected("certificate"));
        for phase in ["rewrite", "access"] {
            let header = echo["headers"][format!("x-r-{phase}")].as_str().unwrap();
            assert_eq!(parse(&decode(header)), expected(phase), "{phase}");
        }
        let balancer = reply.header("x-r-balancer").unwrap();
        assert_eq!(parse(balancer), expected("balancer"));
        let header_filter = reply.header("x-r-header-filter").unwrap();
        assert_eq!(parse(&decode(header_filter)), expected("header_filter"));

        let entry = log_entry(&gateway, &uri).await;
        let errors = entry["plugin_errors"].as_array().unwrap();
        let mut seen = Vec::new();
        for error in errors {
            assert_eq!(error["plugin"], "matrix");
            let phase = error["phase"].as_str().unwrap();
            let phase = phase.strip_suffix(" phase").unwrap_or(phase).to_owned();
            let message = error["message"].as_str().unwrap();
            let report = message.strip_prefix("returned an error: ").unwrap();
            assert_eq!(parse(report), expected(&phase), "{phase}");
            seen.push(phase);
        }
        seen.dedup();
        assert_eq!(seen, ["body_filter", "log"], "{errors:?}");
        // set_client_verify("SUCCESS") succeeded in rewrite, access and balancer.
        assert_eq!(client_verify(&entry), "SUCCESS");
        // The client was asked once, in the certificate phase.
        assert_eq!(client.resolver.requests().len(), 1);
    }
}

/// §6.2: no certificate phase asks, the client has one: no CertificateRequest, chain none,
/// `NONE`; the log names version and cipher the OpenSSL way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_not_requested_gives_no_chain_and_none() {
    let pki = Pki::new();
    let plugin = scripted(
        "report",
        "",
        json!({ "access": [{ "call": "client_tls_report", "to_header": "x-report" }] }),
    );
    let gateway = pki.gateway("", &format!("{DEFAULT_ROUTE}{plugin}")).await;
    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Chain);
        let uri = format!("/case2?v={}", versions.name());
        let reply = client
            .get(gateway.addr("https"), "localhost", &uri)
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert!(
            client.resolver.requests().is_empty(),
            "no CertificateRequest"
        );
        let report: Value =
            serde_json::from_str(&decode(&reply.upstream_header("x-report").unwrap())).unwrap();
        assert_eq!(report[2], ok(None), "chain is none");
        let entry = log_entry(&gateway, &uri).await;
        // The report's own set_client_verify("SUCCESS") shows; the gateway below has no override.
        assert_eq!(client_verify(&entry), "SUCCESS");
        assert_eq!(entry["request"]["tls"]["version"], versions.name());
        let cipher = entry["request"]["tls"]["cipher"].as_str().unwrap();
        let openssl_names: &[&str] = match versions {
            Versions::Tls13 => &[
                "TLS_AES_256_GCM_SHA384",
                "TLS_AES_128_GCM_SHA256",
                "TLS_CHACHA20_POLY1305_SHA256",
            ],
            Versions::Tls12 => &[
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
            ],
        };
        assert!(openssl_names.contains(&cipher), "{cipher}");
    }

    // Without any override the log says NONE.
    let gateway = pki
        .gateway(
            "",
            &format!("{DEFAULT_ROUTE}{}", chain_to_header("chain", "", json!([]))),
        )
        .await;
    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Chain);
        let uri = format!("/case2/plain?v={}", versions.name());
        let reply = client
            .get(gateway.addr("https"), "localhost", &uri)
            .await
            .unwrap();
        assert!(client.resolver.requests().is_empty());
        assert_eq!(upstream_chain(&reply), None);
        assert_eq!(client_verify(&log_entry(&gateway, &uri).await), "NONE");
    }
}

/// §6.3: requested, leaf + intermediate sent, no trust anchors: the upstream gets the client's
/// bundle file byte for byte, the log says `FAILED:unable to get local issuer certificate`. With
/// rustls (both versions) and with curl, which sends the whole `--cert` file as the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_chain_is_returned_byte_for_byte_and_fails_local_issuer() {
    let pki = Pki::new();
    let plugin = chain_to_header(
        "chain",
        "",
        json!([{ "call": "request_client_certificate" }]),
    );
    let gateway = pki.gateway("", &format!("{DEFAULT_ROUTE}{plugin}")).await;
    let bundle = pki.client_chain();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);

    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Chain);
        let uri = format!("/case3?v={}", versions.name());
        let reply = client
            .get(gateway.addr("https"), "localhost", &uri)
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(
            client.resolver.requests(),
            vec![Vec::<Vec<u8>>::new()],
            "asked once, no CA names"
        );
        assert_eq!(upstream_chain(&reply).as_deref(), Some(bundle.as_str()));
        assert_eq!(
            client_verify(&log_entry(&gateway, &uri).await),
            LOCAL_ISSUER
        );
    }

    let cert = pki.path(&pki.files.client_chain);
    let key = pki.path(&pki.files.client_key);
    let out = curl(
        &pki.files,
        gateway.addr("https"),
        "/case3?client=curl",
        &["--cert", &cert, "--key", &key],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.all());
    let echo: Value = serde_json::from_str(&out.stdout).unwrap();
    let chain = decode(echo["headers"]["x-chain"].as_str().unwrap());
    assert_eq!(chain, bundle);
    assert_eq!(
        client_verify(&log_entry(&gateway, "/case3?client=curl").await),
        LOCAL_ISSUER
    );
}

/// §6.4: `ca_certs` = [intermediate, root]: s_client lists both as acceptable CA names, in that
/// order, and the same client gets `SUCCESS`; rustls sees the same two names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_certs_names_are_sent_in_order_and_the_chain_verifies() {
    let pki = Pki::new();
    let plugin = chain_to_header(
        "chain",
        "",
        json!([{ "call": "request_client_certificate", "ca_certs": pki.ca_bundle }]),
    );
    let gateway = pki.gateway("", &format!("{DEFAULT_ROUTE}{plugin}")).await;
    let addr = gateway.addr("https");

    let leaf = pki.path(&pki.files.client_leaf);
    let intermediate = pki.path(&pki.files.intermediate);
    let key = pki.path(&pki.files.client_key);
    let uri = "/case4?client=s_client";
    let out = s_client(
        addr,
        &[
            "-servername",
            "localhost",
            "-cert",
            &leaf,
            "-cert_chain",
            &intermediate,
            "-key",
            &key,
        ],
        &http_get("localhost", uri),
    )
    .await;
    let names = s_client_ca_names(&out.stdout).unwrap_or_else(|| panic!("{}", out.all()));
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].contains("CN = Tollgate Test Intermediate CA"),
        "{names:?}"
    );
    assert!(names[1].contains("CN = Tollgate Test Root CA"), "{names:?}");
    assert_eq!(client_verify(&log_entry(&gateway, uri).await), "SUCCESS");
    // What s_client sent (leaf, then -cert_chain) reached the upstream as the bundle file.
    let echoed = out
        .stdout
        .split_once("\"x-chain\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(chain, _)| decode(chain));
    assert_eq!(echoed, Some(pki.client_chain()), "{}", out.all());

    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Chain);
        let uri = format!("/case4?v={}", versions.name());
        let reply = client.get(addr, "localhost", &uri).await.unwrap();
        assert_eq!(reply.status, 200);
        let requests = client.resolver.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].len(), 2, "two CA names");
        assert_eq!(client_verify(&log_entry(&gateway, &uri).await), "SUCCESS");
    }
}

/// §6.5: requested, the client has no certificate: the handshake completes, chain none, `NONE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_but_not_sent_gives_none() {
    let pki = Pki::new();
    let plugin = scripted(
        "report",
        "route = \"report\"",
        json!({
            "certificate": [{ "call": "request_client_certificate" }],
            "rewrite": [{ "call": "client_tls_report", "value": "FAILED:unused", "to_header": "x-report" }],
            "access": [{ "call": "set_client_verify", "value": "NONE" }],
        }),
    );
    // The report's set_client_verify is overridden back by access; a second route checks the
    // value with no override at all.
    let plain = chain_to_header(
        "chain",
        "route = \"plain\"",
        json!([{ "call": "request_client_certificate" }]),
    );
    let routes = "[[routes]]\nname = \"plain\"\npaths = [\"/plain\"]\nservice = \"echo\"\n\n\
                  [[routes]]\nname = \"report\"\npaths = [\"/report\"]\nservice = \"echo\"\n\n";
    let gateway = pki.gateway("", &format!("{routes}{plugin}{plain}")).await;
    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Anonymous);
        let uri = format!("/plain?v={}", versions.name());
        let reply = client
            .get(gateway.addr("https"), "localhost", &uri)
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(client.resolver.requests().len(), 1, "was asked");
        assert_eq!(upstream_chain(&reply), None);
        assert_eq!(client_verify(&log_entry(&gateway, &uri).await), "NONE");

        let uri = format!("/report?v={}", versions.name());
        let reply = client
            .get(gateway.addr("https"), "localhost", &uri)
            .await
            .unwrap();
        let report: Value =
            serde_json::from_str(&decode(&reply.upstream_header("x-report").unwrap())).unwrap();
        assert_eq!(report[2], ok(None), "chain is none, not an error");
        assert_eq!(client_verify(&log_entry(&gateway, &uri).await), "NONE");
    }
}

/// §6.6, first half: with `disable_session_reuse` no connection resumes: rustls reconnecting
/// with the same `ClientConfig` gets a full handshake every time (TLS 1.3 and 1.2) and is asked
/// for its certificate every time; s_client `-tls1_2 -sess_out` then `-sess_in` says `New`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_session_reuse_makes_resumption_impossible() {
    let pki = Pki::new();
    let plugin = chain_to_header(
        "chain",
        "",
        json!([{ "call": "request_client_certificate" }, { "call": "disable_session_reuse" }]),
    );
    let gateway = pki.gateway("", &format!("{DEFAULT_ROUTE}{plugin}")).await;
    let addr = gateway.addr("https");
    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Chain);
        for attempt in 1..=3 {
            let uri = format!("/case6/off?v={}&n={attempt}", versions.name());
            let reply = client.get(addr, "localhost", &uri).await.unwrap();
            assert_eq!(
                reply.handshake,
                Some(HandshakeKind::Full),
                "{versions:?} #{attempt}"
            );
            assert_eq!(upstream_chain(&reply), Some(pki.client_chain()));
            assert_eq!(client.resolver.requests().len(), attempt, "asked again");
            assert_eq!(
                client_verify(&log_entry(&gateway, &uri).await),
                LOCAL_ISSUER
            );
        }
    }

    let session = pki.dir.path().join("off.session");
    let session = session.display().to_string();
    let common = pki.s_client_tls12_with_chain();
    let common: Vec<&str> = common.iter().map(String::as_str).collect();
    let first = s_client(addr, &[&common[..], &["-sess_out", &session]].concat(), b"").await;
    assert_eq!(
        s_client_session(&first.stdout),
        Some("New"),
        "{}",
        first.all()
    );
    assert!(
        std::path::Path::new(&session).is_file(),
        "s_client saved the TLS 1.2 session: {}",
        first.all()
    );
    for _ in 0..2 {
        let again = s_client(addr, &[&common[..], &["-sess_in", &session]].concat(), b"").await;
        assert_eq!(
            s_client_session(&again.stdout),
            Some("New"),
            "{}",
            again.all()
        );
    }
}

/// §6.6, second half: without `disable_session_reuse`, sessions resume (rustls `Resumed` on
/// TLS 1.3 and 1.2; s_client `-tls1_2` says `Reused`) and the resumed connection still has the
/// client's chain, which the upstream sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resumes_without_disable_and_keeps_the_chain() {
    let pki = Pki::new();
    let plugin = chain_to_header(
        "chain",
        "",
        json!([{ "call": "request_client_certificate", "ca_certs": pki.ca_bundle }]),
    );
    let gateway = pki.gateway("", &format!("{DEFAULT_ROUTE}{plugin}")).await;
    let addr = gateway.addr("https");
    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Chain);
        let uri = format!("/case6/on?v={}&n=1", versions.name());
        let first = client.get(addr, "localhost", &uri).await.unwrap();
        assert_eq!(first.handshake, Some(HandshakeKind::Full));
        assert_eq!(upstream_chain(&first), Some(pki.client_chain()));
        for attempt in 2..=3 {
            let uri = format!("/case6/on?v={}&n={attempt}", versions.name());
            let reply = client.get(addr, "localhost", &uri).await.unwrap();
            assert_eq!(
                reply.handshake,
                Some(HandshakeKind::Resumed),
                "{versions:?} #{attempt}"
            );
            assert_eq!(upstream_chain(&reply), Some(pki.client_chain()));
            assert_eq!(client_verify(&log_entry(&gateway, &uri).await), "SUCCESS");
        }
        assert_eq!(client.resolver.requests().len(), 1, "asked on the full one");
    }

    let session = pki.dir.path().join("on.session");
    let session = session.display().to_string();
    let common = pki.s_client_tls12_with_chain();
    let common: Vec<&str> = common.iter().map(String::as_str).collect();
    let first = s_client(addr, &[&common[..], &["-sess_out", &session]].concat(), b"").await;
    assert_eq!(
        s_client_session(&first.stdout),
        Some("New"),
        "{}",
        first.all()
    );
    let uri = "/case6/on?client=s_client";
    let again = s_client(
        addr,
        &[&common[..], &["-sess_in", &session]].concat(),
        &http_get("localhost", uri),
    )
    .await;
    assert_eq!(
        s_client_session(&again.stdout),
        Some("Reused"),
        "{}",
        again.all()
    );
    let echoed = again
        .stdout
        .split_once("\"x-chain\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(chain, _)| decode(chain));
    assert_eq!(echoed, Some(pki.client_chain()), "{}", again.all());
    let entry = log_entry(&gateway, uri).await;
    assert_eq!(client_verify(&entry), "SUCCESS");
    assert_eq!(entry["request"]["tls"]["version"], "TLSv1.2");
}

/// §6.7: a plaintext request has no `request.tls` in its log line, and the chain call answers
/// `connection is not TLS` (even after `set_client_verify`, no `tls` appears).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_request_has_no_tls_and_chain_is_not_tls() {
    let pki = Pki::new();
    let plugin = scripted(
        "report",
        "",
        json!({
            "certificate": [{ "call": "request_client_certificate" }],
            "rewrite": [{ "call": "client_tls_report", "to_header": "x-report" }],
        }),
    );
    let gateway = pki
        .start("http", "", &format!("{DEFAULT_ROUTE}{plugin}"))
        .await;
    let reply = plain_get(gateway.addr("http"), "localhost", "/case7")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let report: Value =
        serde_json::from_str(&decode(&reply.upstream_header("x-report").unwrap())).unwrap();
    assert_eq!(report[0], wrong_phase("rewrite", CERT_ONLY));
    assert_eq!(report[1], wrong_phase("rewrite", CERT_ONLY));
    assert_eq!(report[2], json!({ "err": "connection is not TLS" }));
    let entry = log_entry(&gateway, "/case7").await;
    assert!(entry["request"].get("tls").is_none(), "{entry}");
    assert_eq!(entry["response"]["status"], 200);
}

/// §6.8: `set_client_verify` in access: accepted values show in the log (`SUCCESS`, `FAILED:`,
/// the last call wins); `success`, `FAILED`, ` SUCCESS`, `NONE ` are rejected with the exact
/// message (the step propagates it: the client gets 500, `plugin_errors` has the message, and the
/// log keeps the computed `NONE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_client_verify_values_reach_the_log_or_are_rejected() {
    let pki = Pki::new();
    let cases: [(&[&str], Result<&str, &str>); 7] = [
        (&["SUCCESS"], Ok("SUCCESS")),
        (&["FAILED:"], Ok("FAILED:")),
        (&["SUCCESS", "FAILED:revoked"], Ok("FAILED:revoked")),
        (&["success"], Err("success")),
        (&["FAILED"], Err("FAILED")),
        (&[" SUCCESS"], Err(" SUCCESS")),
        (&["NONE "], Err("NONE ")),
    ];
    let mut rest = String::new();
    for (index, (values, _)) in cases.iter().enumerate() {
        rest.push_str(&format!(
            "[[routes]]\nname = \"r{index}\"\npaths = [\"/v{index}/\"]\nservice = \"echo\"\n\n"
        ));
        let steps: Vec<Value> = values
            .iter()
            .map(|v| json!({ "call": "set_client_verify", "value": v, "propagate": true }))
            .collect();
        rest.push_str(&scripted(
            &format!("v{index}"),
            &format!("route = \"r{index}\""),
            json!({ "access": steps }),
        ));
    }
    let gateway = pki.gateway("", &rest).await;
    let client = TlsClient::new(&pki.files, Versions::Tls13, Identity::Chain);
    for (index, (values, outcome)) in cases.iter().enumerate() {
        let uri = format!("/v{index}/x");
        let reply = client
            .get(gateway.addr("https"), "localhost", &uri)
            .await
            .unwrap();
        let entry = log_entry(&gateway, &uri).await;
        match outcome {
            Ok(logged) => {
                assert_eq!(reply.status, 200, "{values:?}");
                assert_eq!(client_verify(&entry), *logged, "{values:?}");
                assert!(entry.get("plugin_errors").is_none(), "{entry}");
            }
            Err(value) => {
                assert_eq!(reply.status, 500, "{values:?}");
                assert_eq!(client_verify(&entry), "NONE", "{values:?}");
                let errors = entry["plugin_errors"].as_array().unwrap();
                assert_eq!(errors.len(), 1, "{errors:?}");
                assert_eq!(errors[0]["plugin"], format!("v{index}"));
                assert_eq!(
                    errors[0]["message"],
                    format!(
                        "returned an error: unknown client verify value: {value} accepted values \
                         are: \"SUCCESS\", \"NONE\" or \"FAILED:<reason>\""
                    )
                );
            }
        }
    }
}

/// The access log's `plugin_errors[].phase` names the phase as everywhere else (`access`), as
/// `LogEntry`'s own serializer test shows, not `access phase`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_errors_name_the_phase_canonically() {
    let pki = Pki::new();
    let plugin = scripted(
        "bad",
        "",
        json!({ "access": [{ "call": "set_client_verify", "value": "nope", "propagate": true }] }),
    );
    let gateway = pki.gateway("", &format!("{DEFAULT_ROUTE}{plugin}")).await;
    let client = TlsClient::new(&pki.files, Versions::Tls13, Identity::Anonymous);
    let reply = client
        .get(gateway.addr("https"), "localhost", "/phase-name")
        .await
        .unwrap();
    assert_eq!(reply.status, 500);
    let entry = log_entry(&gateway, "/phase-name").await;
    assert_eq!(entry["plugin_errors"][0]["phase"], "access", "{entry}");
}

/// The certificate phase runs the plugins of the routes the SNI can reach: a route-scoped plugin
/// on `a.localhost` requests the certificate (with CA names) for that SNI only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_phase_runs_per_sni_for_route_plugins() {
    let pki = Pki::new();
    let routes = "[[routes]]\nname = \"a\"\nhosts = [\"a.localhost\"]\nservice = \"echo\"\n\n\
                  [[routes]]\nname = \"b\"\nhosts = [\"b.localhost\"]\nservice = \"echo\"\n\n";
    let a = chain_to_header(
        "mtls-a",
        "route = \"a\"",
        json!([{ "call": "request_client_certificate", "ca_certs": pki.ca_bundle }]),
    );
    let b = chain_to_header("chain-b", "route = \"b\"", json!([]));
    let gateway = pki.gateway("", &format!("{routes}{a}{b}")).await;
    let addr = gateway.addr("https");

    for versions in Versions::BOTH {
        let client = TlsClient::any_server(&pki.files, versions, Identity::Chain);
        let uri = format!("/sni-a?v={}", versions.name());
        let reply = client.get(addr, "a.localhost", &uri).await.unwrap();
        assert_eq!(reply.status, 200);
        let requests = client.resolver.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].len(), 2);
        assert_eq!(upstream_chain(&reply), Some(pki.client_chain()));
        assert_eq!(client_verify(&log_entry(&gateway, &uri).await), "SUCCESS");

        let client = TlsClient::any_server(&pki.files, versions, Identity::Chain);
        let uri = format!("/sni-b?v={}", versions.name());
        let reply = client.get(addr, "b.localhost", &uri).await.unwrap();
        assert_eq!(reply.status, 200);
        assert!(
            client.resolver.requests().is_empty(),
            "no CertificateRequest"
        );
        assert_eq!(upstream_chain(&reply), None);
        assert_eq!(client_verify(&log_entry(&gateway, &uri).await), "NONE");
    }

    let names = |sni: &'static str| async move {
        let out = s_client(addr, &["-servername", sni], b"").await;
        assert!(out.stdout.contains("Server certificate"), "{}", out.all());
        s_client_ca_names(&out.stdout)
    };
    let a_names = names("a.localhost").await.unwrap();
    assert_eq!(a_names.len(), 2, "{a_names:?}");
    assert!(a_names[0].contains("Tollgate Test Intermediate CA"));
    assert_eq!(names("b.localhost").await, None);
}

/// Garbage on the TLS port closes that connection only: a connection already open keeps working
/// and new clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_close_only_that_connection() {
    let pki = Pki::new();
    let gateway = pki.gateway("", DEFAULT_ROUTE).await;
    let addr = gateway.addr("https");
    let client = TlsClient::new(&pki.files, Versions::Tls13, Identity::Anonymous);
    let mut open = client.connect(addr, "localhost").await.unwrap();

    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
        &[0xff; 4096][..],
        &[0x16, 0x03, 0x01, 0xff, 0xff][..],
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(garbage).await.unwrap();
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "garbage {:?}... left open", &garbage[..5]);
    }

    open.write_all(&http_get("localhost", "/still-open"))
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), open.read_to_end(&mut raw))
        .await
        .unwrap();
    assert_eq!(clients::parse_response(&raw).unwrap().status, 200);
    let reply = client.get(addr, "localhost", "/after").await.unwrap();
    assert_eq!(reply.status, 200);
    log_entry(&gateway, "/after").await;
}

/// A client that never finishes its handshake is cut at `handshake_timeout` (200 ms), whether it
/// is silent or stops inside its ClientHello; other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshake_is_cut_at_handshake_timeout() {
    let pki = Pki::new();
    let gateway = pki
        .gateway("handshake_timeout = \"200ms\"", DEFAULT_ROUTE)
        .await;
    let addr = gateway.addr("https");

    async fn time_to_close(addr: SocketAddr, send: &'static [u8]) -> Duration {
        let started = tokio::time::Instant::now();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(send).await.unwrap();
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "still open after 5 s");
        started.elapsed()
    }
    let silent = tokio::spawn(time_to_close(addr, b""));
    // A record header announcing 512 bytes of ClientHello, then only 4 of them.
    let partial = tokio::spawn(time_to_close(
        addr,
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc],
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let client = TlsClient::new(&pki.files, Versions::Tls13, Identity::Anonymous);
    let reply = client.get(addr, "localhost", "/meanwhile").await.unwrap();
    assert_eq!(reply.status, 200);
    for stalled in [silent, partial] {
        let elapsed = stalled.await.unwrap();
        assert!(
            elapsed >= Duration::from_millis(180) && elapsed < Duration::from_secs(2),
            "closed after {elapsed:?}"
        );
    }
    let reply = client.get(addr, "localhost", "/after").await.unwrap();
    assert_eq!(reply.status, 200);
}

/// A client whose CertificateVerify is signed with a key that is not its certificate's fails the
/// handshake (TLS 1.3 and 1.2): no request is served or logged; the next client works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificate_verify_signature_fails_the_handshake() {
    let pki = Pki::new();
    let plugin = chain_to_header(
        "chain",
        "",
        json!([{ "call": "request_client_certificate" }]),
    );
    let gateway = pki.gateway("", &format!("{DEFAULT_ROUTE}{plugin}")).await;
    let addr = gateway.addr("https");
    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::WrongKey);
        let uri = format!("/bad-signature?v={}", versions.name());
        let result = client.get(addr, "localhost", &uri).await;
        // The server refuses the signature with a decrypt_error alert.
        let err = result.expect_err("the handshake must fail").to_string();
        assert_eq!(err, "received fatal alert: DecryptError", "{versions:?}");
        assert_eq!(client.resolver.requests().len(), 1, "was asked");
    }
    let client = TlsClient::new(&pki.files, Versions::Tls13, Identity::Chain);
    let reply = client.get(addr, "localhost", "/good").await.unwrap();
    assert_eq!(upstream_chain(&reply), Some(pki.client_chain()));
    log_entry(&gateway, "/good").await;
    let logged: Vec<Value> = log_lines(&gateway)
        .into_iter()
        .map(|entry| entry["request"]["uri"].clone())
        .collect();
    assert_eq!(logged, ["/good"]);
}

/// One gateway with a TLS and a plaintext listener, both on port 0 (as `TestGateway` is meant to
/// be used): a request on each, `request.tls` only on the TLS one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plaintext_listeners_on_port_zero_run_side_by_side() {
    let pki = Pki::new();
    let plaintext =
        format!("[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n\n{DEFAULT_ROUTE}");
    let gateway = pki.gateway("", &plaintext).await;
    let client = TlsClient::new(&pki.files, Versions::Tls13, Identity::Anonymous);
    let reply = client
        .get(gateway.addr("https"), "localhost", "/over-tls")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let reply = plain_get(gateway.addr("http"), "localhost", "/in-clear")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        client_verify(&log_entry(&gateway, "/over-tls").await),
        "NONE"
    );
    assert!(
        log_entry(&gateway, "/in-clear").await["request"]
            .get("tls")
            .is_none()
    );
}

// ---- the client leaf's facts (`client-tls.get-client-certificate`) ----

/// `openssl x509 -in file -noout <args>`: OpenSSL's own reading of the certificate.
fn openssl_x509(file: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("openssl")
        .arg("x509")
        .arg("-in")
        .arg(file)
        .arg("-noout")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(output.status.success(), "openssl x509 {args:?} failed");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The value after `key=` in one line of `openssl x509` output.
fn after_equals(line: &str) -> &str {
    line.split_once('=').map(|(_, value)| value).unwrap()
}

/// `2026-12-01 13:44:47Z` (`-dateopt iso_8601`) as Unix seconds.
fn iso_8601_seconds(text: &str) -> i64 {
    let digits = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap();
    let (year, month, day) = (digits(0..4), digits(5..7), digits(8..10));
    let (hour, minute, second) = (digits(11..13), digits(14..16), digits(17..19));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hour * 3_600 + minute * 60 + second
}

/// A fingerprint as OpenSSL prints it (`AB:CD:…`) in the contract's spelling (`abcd…`).
fn fingerprint(line: &str) -> String {
    after_equals(line).replace(':', "").to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_facts_match_openssls_reading_of_the_same_leaf() {
    let pki = Pki::new();
    let plugin = scripted(
        "facts",
        "",
        json!({
            "certificate": [{ "call": "request_client_certificate" }],
            "access": [{ "call": "get_client_certificate", "to_header": "x-cert", "propagate": true }],
        }),
    );
    let gateway = pki.gateway("", &format!("{DEFAULT_ROUTE}{plugin}")).await;
    let leaf_file = &pki.files.client_leaf;
    let ossl = |args: &[&str]| openssl_x509(leaf_file, args);
    let san_line = ossl(&["-ext", "subjectAltName"]);
    // `DNS:a, email:b, URI:c, IP Address:d`, in certificate order. OpenSSL prints IPv6
    // uncompressed and upper case: compare addresses, not spellings.
    let sans: Vec<Value> = san_line
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .split(", ")
        .map(|san| {
            let (kind, value) = san.split_once(':').unwrap();
            match kind {
                "DNS" => json!({ "dns": value }),
                "email" => json!({ "email": value }),
                "URI" => json!({ "uri": value }),
                "IP Address" => {
                    let ip: std::net::IpAddr = value.parse().unwrap();
                    json!({ "ip": ip.to_string() })
                }
                other => panic!("unexpected SAN kind {other}"),
            }
        })
        .collect();
    let dates = ossl(&["-startdate", "-enddate", "-dateopt", "iso_8601"]);
    let mut dates = dates
        .lines()
        .map(|line| iso_8601_seconds(after_equals(line)));
    let expected = json!({
        "subject": after_equals(&ossl(&["-subject", "-nameopt", "RFC2253"])),
        "issuer": after_equals(&ossl(&["-issuer", "-nameopt", "RFC2253"])),
        "subject-legacy": after_equals(&ossl(&["-subject", "-nameopt", "compat"])),
        "issuer-legacy": after_equals(&ossl(&["-issuer", "-nameopt", "compat"])),
        "common-names": ["test client"],
        "serial": after_equals(&ossl(&["-serial"])),
        "fingerprint-sha1": fingerprint(&ossl(&["-fingerprint", "-sha1"])),
        "fingerprint-sha256": fingerprint(&ossl(&["-fingerprint", "-sha256"])),
        "subject-alt-names": sans,
        "not-before": dates.next().unwrap(),
        "not-after": dates.next().unwrap(),
        "pem": std::fs::read_to_string(leaf_file).unwrap(),
    });
    // The leaf has a SAN of every kind, and a DN of several RDNs, so nothing above is vacuous.
    assert_eq!(expected["subject-alt-names"].as_array().unwrap().len(), 5);
    assert_eq!(
        expected["subject"],
        "CN=test client,OU=Clients,O=Tollgate Test"
    );

    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Chain);
        let reply = client
            .get(gateway.addr("https"), "localhost", "/facts")
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{versions:?}");
        let facts: Value =
            serde_json::from_str(&decode(&reply.upstream_header("x-cert").unwrap())).unwrap();
        assert_eq!(facts, expected, "{versions:?}");
    }
    // Without a certificate there are no facts, and no error.
    let client = TlsClient::new(&pki.files, Versions::Tls13, Identity::Anonymous);
    let reply = client
        .get(gateway.addr("https"), "localhost", "/facts/none")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_header("x-cert"), None);
}

// ---- plugins built against an older WIT ----

/// The `tollgate` binary with one HTTPS listener (no client CA bundle), an echo upstream, and
/// `guest` (a plugin built against an older WIT) on every route with `config`.
async fn binary_with_old_plugin(
    pki: &Pki,
    guest: &str,
    config: &Value,
) -> tollgate_tests::binary::Tollgate {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(tollgate::proxy::echo::serve_echo(
        echo,
        std::future::pending(),
    ));
    let dir = pki.dir.path().display();
    let config = format!(
        r#"
[[listeners]]
name = "https"
address = "127.0.0.1:0"
[[listeners.certificates]]
cert = "{dir}/server.pem"
key = "{dir}/server.key"

[[services]]
name = "echo"
targets = ["{echo_addr}"]

{DEFAULT_ROUTE}
[[plugins]]
name = "built-against-an-older-wit"
path = "{guest}"
config = {config}
"#,
        config = toml_inline(config),
    );
    tokio::task::block_in_place(|| tollgate_tests::binary::Tollgate::run(pki.dir.path(), &config))
}

/// A plugin built from source against `tollgate:plugin@0.1.0` (`wit/compat/`), with wit-bindgen
/// and no SDK, loads in the `tollgate` binary and runs unchanged: the certificate phase asks for
/// the chain, and in `access` every 0.1.0 function it calls answers as before, phase table
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_wit_0_1_0_runs_unchanged_in_the_tollgate_binary() {
    let pki = Pki::new();
    let root = std::fs::read_to_string(&pki.files.root).unwrap();
    let gateway = binary_with_old_plugin(
        &pki,
        tollgate_tests::guests::WIT_0_1_0,
        &json!({ "ca": root }),
    )
    .await;
    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Chain);
        let reply = client
            .get(gateway.addr("https"), "localhost", "/old")
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{versions:?}");
        let header = |name: &str| reply.upstream_header(name);
        assert_eq!(header("x-old-chain-certs").as_deref(), Some("2"));
        // The listener has no client CA bundle: the handshake's verdict is OpenSSL's for that.
        assert_eq!(header("x-old-client-verify").as_deref(), Some(LOCAL_ISSUER));
        assert_eq!(header("x-old-verify-chain").as_deref(), Some("SUCCESS"));
        assert_eq!(
            header("x-old-wrong-phase").as_deref(),
            Some("function cannot be called in access phase (only in: certificate)")
        );
    }
}

/// A plugin built from source against `tollgate:plugin@0.2.0` loads in the `tollgate` binary and
/// runs unchanged: 0.2.0's `get-client-certificate` answers with the same facts as before (its
/// record is 0.2.0's), and its phase table too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_wit_0_2_0_runs_unchanged_in_the_tollgate_binary() {
    let pki = Pki::new();
    let gateway = binary_with_old_plugin(&pki, tollgate_tests::guests::WIT_0_2_0, &json!({})).await;
    let ossl = |args: &[&str]| openssl_x509(&pki.files.client_leaf, args);
    let subject = after_equals(&ossl(&["-subject", "-nameopt", "RFC2253"])).to_owned();
    let serial = after_equals(&ossl(&["-serial"])).to_owned();
    let sans = ossl(&["-ext", "subjectAltName"]);
    let san_count = sans.lines().nth(1).unwrap().trim().split(", ").count();
    for versions in Versions::BOTH {
        let client = TlsClient::new(&pki.files, versions, Identity::Chain);
        let reply = client
            .get(gateway.addr("https"), "localhost", "/old")
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{versions:?}");
        let header = |name: &str| reply.upstream_header(name);
        assert_eq!(header("x-old-chain-certs").as_deref(), Some("2"));
        assert_eq!(header("x-old-subject").as_deref(), Some(subject.as_str()));
        assert_eq!(header("x-old-serial").as_deref(), Some(serial.as_str()));
        assert_eq!(header("x-old-sans"), Some(san_count.to_string()));
        assert_eq!(
            header("x-old-pem").as_deref(),
            Some("-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(
            header("x-old-wrong-phase").as_deref(),
            Some(
                "function cannot be called in certificate phase \
                 (only in: rewrite, access, balancer, header_filter, body_filter, log)"
            )
        );
    }
}
