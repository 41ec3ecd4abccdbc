//! The example plugins, proven end to end.
//!
//! - Offline: every scenario file of every example (`examples/<name>/scenarios/`) through the
//!   harness library, one test per example; and the `tollgate test` binary's exit codes.
//! - Through a real gateway ([`TestGateway`]) with real TLS clients (rustls, `openssl s_client`):
//!   tls-handshake-modifier's per-SNI certificate request, mtls-auth's CA names and answers,
//!   tls-metadata-headers' chain header, and the C and Python plugins doing their job.
//!
//! The C and Python plugins come from `target/guests/` (built by `scripts/test`, or here by their
//! build scripts when missing); the `tollgate` binary from `target/release/` (built by
//! `scripts/test`).

use std::path::Path;
use std::process::Command;

use percent_encoding::percent_decode_str;
use tollgate::runtime::{PluginSpec, StartImage};
use tollgate_tests::clients::{Identity, Reply, TlsClient, Versions, s_client, s_client_ca_names};
use tollgate_tests::examples_support::{
    ExampleClient, assert_scenarios_pass, cert, client_files, example_dir, pem_for_toml,
    plugin_path, tollgate_binary, with_client,
};
use tollgate_tests::gateway::TestGateway;

// ---------------------------------------------------------------------------------------------
// Offline: the scenario files

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_modifier() {
    assert!(assert_scenarios_pass("tls-handshake-modifier").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_auth() {
    assert!(assert_scenarios_pass("mtls-auth").await >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_metadata_headers() {
    assert!(assert_scenarios_pass("tls-metadata-headers").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_min_chain() {
    assert!(assert_scenarios_pass("c-min-chain").await >= 2);
}

/// The Rust and C examples import from WASI preview 1 only what Rust's panic path and C's stdio
/// need, so the gateway componentizes them with its small WASI adapter (their scenario tests
/// above run on it); the Python example comes as a component with its own.
#[test]
fn rust_and_c_examples_get_the_small_wasi_adapter() {
    for example in [
        "tls-handshake-modifier",
        "mtls-auth",
        "tls-metadata-headers",
        "c-min-chain",
    ] {
        let module = std::fs::read(plugin_path(example)).expect("example built");
        assert!(
            tollgate::runtime::gets_small_adapter(&module),
            "{example} imports more of WASI than the small adapter provides"
        );
    }
}

/// The Rust and C examples start their instances from a snapshot taken after `configure`; the
/// Python one loads either way (a snapshot of componentize-py output, or `configure` in every
/// instance when wizer cannot take one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_c_examples_start_from_a_configured_snapshot() {
    let ca = pem_for_toml(&cert("mtls-auth", "ca-bundle.pem"));
    let configs = [
        (
            "tls-handshake-modifier",
            serde_json::json!({ "snis": ["api.example.com"] }),
        ),
        ("mtls-auth", serde_json::json!({ "ca_certificates": ca })),
        ("tls-metadata-headers", serde_json::json!({})),
        ("c-min-chain", serde_json::json!({ "min_chain_length": 2 })),
        ("py-client-cert-header", serde_json::json!({})),
    ];
    for (example, config) in configs {
        let mut spec = PluginSpec::new(example, plugin_path(example)).with_config(config);
        spec.memory_limit = 48 << 20;
        spec.time_limit = std::time::Duration::from_secs(1);
        let plugin = tollgate_tests::load_spec(spec).await;
        eprintln!("{example}: {:?}", plugin.start_image());
        if example != "py-client-cert-header" {
            assert_eq!(plugin.start_image(), &StartImage::Configured, "{example}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_client_cert_header() {
    assert!(assert_scenarios_pass("py-client-cert-header").await >= 2);
}

/// `tollgate test` exits 0 when every expectation holds, 1 when one fails (a temp copy of the
/// scenario with one wrong expectation), 2 when the scenario cannot be used.
#[test]
fn tollgate_test_cli_exit_codes() {
    let binary = tollgate_binary();
    let plugin = plugin_path("tls-handshake-modifier");
    let scenario = example_dir("tls-handshake-modifier").join("scenarios/default.toml");
    let run = |scenario: &Path| {
        let output = Command::new(&binary)
            .arg("test")
            .arg(&plugin)
            .arg(scenario)
            .output()
            .expect("tollgate runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stdout, stderr)
    };

    let (code, stdout, stderr) = run(&scenario);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(": PASS"), "{stdout}");

    // The same scenario, next to a copy of its certificates, with one expectation that cannot hold.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("certs")).expect("certs dir");
    for file in ["alice-chain.pem", "ca-bundle.pem"] {
        std::fs::copy(
            cert("tls-handshake-modifier", file),
            dir.path().join("certs").join(file),
        )
        .expect("certificate copied");
    }
    let text = std::fs::read_to_string(&scenario).expect("scenario");
    assert!(text.contains("status = 200\n"));
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        text.replacen("status = 200\n", "status = 418\n", 1),
    )
    .expect("broken copy");
    let (code, stdout, stderr) = run(&broken);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("FAIL status = 418 (got 200)"), "{stdout}");
    assert!(stdout.contains(": FAIL"), "{stdout}");

    let (code, stdout, stderr) = run(&dir.path().join("missing.toml"));
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("cannot read scenario"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Through the gateway

/// An HTTPS listener (`https`, the test PKI's server certificate for every SNI, no client CA)
/// in front of the echo upstream, with `plugins` (`[[plugins]]` tables).
fn config(plugins: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "https"
address = "127.0.0.1:0"
[[listeners.certificates]]
cert = "{{{{dir}}}}/server.pem"
key = "{{{{dir}}}}/server.key"

[[services]]
name = "echo"
targets = ["{{{{echo}}}}"]

[[routes]]
service = "echo"

{plugins}
"#
    )
}

/// A client of `gateway` presenting `client` (or nothing), accepting the test server certificate
/// for any SNI.
fn client(gateway: &TestGateway, client: Option<ExampleClient>) -> TlsClient {
    match client {
        None => TlsClient::any_server(&gateway.pki, Versions::Tls13, Identity::Anonymous),
        Some(client) => {
            let (chain, key) = client_files(client);
            let pki = with_client(&gateway.pki, chain, key);
            TlsClient::any_server(&pki, Versions::Tls13, Identity::Chain)
        }
    }
}

/// `GET path` on a new connection with SNI `sni`; panics on an I/O error.
async fn get(
    client: &TlsClient,
    gateway: &TestGateway,
    sni: &str,
    headers: &[(&str, &str)],
) -> Reply {
    client
        .request(gateway.addr("https"), sni, "GET", "/", headers)
        .await
        .unwrap_or_else(|err| panic!("request with SNI {sni}: {err}"))
}

/// The `client_verify` of access log line `index` (waiting for it).
async fn logged_verify(gateway: &TestGateway, index: usize) -> serde_json::Value {
    gateway.log_entries(index + 1).await[index]["request"]["tls"]["client_verify"].clone()
}

fn plugin_file(example: &str) -> String {
    plugin_path(example).display().to_string()
}

/// tls-handshake-modifier asks for a certificate on matching SNIs only, with no CA names and no
/// session reuse; tls-metadata-headers after it forwards the chain, which URL-decodes to the
/// client's bundle byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_modifier_requests_per_sni_and_metadata_headers_forward_the_chain() {
    let gateway = TestGateway::start(&config(&format!(
        r#"
[[plugins]]
name = "handshake"
path = "{}"
config = {{ snis = ["api.example.com", "*.internal.example"] }}

[[plugins]]
name = "metadata"
path = "{}"
order = 20
"#,
        plugin_file("tls-handshake-modifier"),
        plugin_file("tls-metadata-headers"),
    )))
    .await;
    let bundle = std::fs::read_to_string(cert("tls-metadata-headers", "alice-chain.pem"))
        .expect("client bundle");
    let leaf = std::fs::read_to_string(cert("tls-metadata-headers", "alice.pem")).expect("leaf");

    let mut lines = 0;
    for sni in ["api.example.com", "db.internal.example"] {
        let alice = client(&gateway, Some(ExampleClient::Alice));
        let reply = get(&alice, &gateway, sni, &[("x-client-cert-chain", "forged")]).await;
        assert_eq!(reply.status, 200, "{sni}");
        assert_eq!(
            alice.resolver.requests(),
            [Vec::<Vec<u8>>::new()],
            "{sni}: one CertificateRequest, without CA names"
        );
        let chain = reply
            .upstream_header("x-client-cert-chain")
            .unwrap_or_else(|| panic!("{sni}: no chain header upstream: {:?}", reply.json()));
        let decoded = percent_decode_str(&chain).decode_utf8().expect("UTF-8 PEM");
        assert_eq!(
            decoded, bundle,
            "{sni}: the chain header is the client's bundle"
        );
        let leaf_header = reply.upstream_header("x-client-cert").expect("leaf header");
        assert_eq!(
            percent_decode_str(&leaf_header)
                .decode_utf8()
                .expect("UTF-8"),
            leaf
        );
        assert_eq!(
            reply.upstream_header("x-client-cert-serial").as_deref(),
            Some("8A01")
        );
        assert_eq!(
            reply.upstream_header("x-client-cert-subject-dn").as_deref(),
            Some("CN=alice,O=Tollgate Examples")
        );
        assert_eq!(
            logged_verify(&gateway, lines).await,
            "FAILED:unable to get local issuer certificate",
            "requested, no trust anchors"
        );
        lines += 1;

        // Session reuse is off: the next connection is a full handshake, asked again.
        let again = get(&alice, &gateway, sni, &[]).await;
        assert_eq!(again.handshake, Some(rustls::HandshakeKind::Full), "{sni}");
        assert_eq!(alice.resolver.requests().len(), 2, "{sni}: asked again");
        lines += 1;
    }

    for sni in ["www.example.com", "internal.example"] {
        let alice = client(&gateway, Some(ExampleClient::Alice));
        let reply = get(&alice, &gateway, sni, &[("x-client-cert-chain", "forged")]).await;
        assert_eq!(reply.status, 200, "{sni}");
        assert!(
            alice.resolver.requests().is_empty(),
            "{sni}: no CertificateRequest"
        );
        assert_eq!(reply.upstream_header("x-client-cert-chain"), None, "{sni}");
        assert_eq!(reply.upstream_header("x-client-cert"), None, "{sni}");
        assert_eq!(logged_verify(&gateway, lines).await, "NONE", "{sni}");
        lines += 1;
    }
    gateway.stop().await;
}

/// A gateway with mtls-auth guarding everything: send_ca_dn, consumer alice by email SAN.
async fn mtls_gateway() -> TestGateway {
    let ca = pem_for_toml(&cert("mtls-auth", "ca-bundle.pem"));
    TestGateway::start(&config(&format!(
        r#"
[[plugins]]
name = "mtls"
path = "{}"
[plugins.config]
send_ca_dn = true
consumers = {{ "alice@example.com" = "alice" }}
ca_certificates = """
{ca}"""
"#,
        plugin_file("mtls-auth"),
    )))
    .await
}

/// `openssl s_client` lists the CA names of mtls-auth's certificate request, in the order of
/// `ca_certificates` (intermediate, then root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_auth_send_ca_dn_names_in_s_client() {
    let gateway = mtls_gateway().await;
    let output = s_client(
        gateway.addr("https"),
        &["-servername", "api.example.com", "-tls1_3"],
        b"",
    )
    .await;
    assert_eq!(
        s_client_ca_names(&output.stdout),
        Some(vec![
            "O = Tollgate Examples, CN = Tollgate Example Intermediate CA".to_owned(),
            "O = Tollgate Examples, CN = Tollgate Example Root CA".to_owned(),
        ]),
        "{}",
        output.all()
    );

    // rustls sees the same names (DER), in the same order.
    let alice = client(&gateway, Some(ExampleClient::Alice));
    assert_eq!(
        get(&alice, &gateway, "api.example.com", &[]).await.status,
        200
    );
    let requests = alice.resolver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].len(), 2, "two CA names");
    gateway.stop().await;
}

/// mtls-auth's answers as a client sees them: status, body, and the headers at the upstream;
/// and the log's client_verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_auth_answers_over_tls() {
    let gateway = mtls_gateway().await;
    let sni = "api.example.com";

    let alice = client(&gateway, Some(ExampleClient::Alice));
    let reply = get(&alice, &gateway, sni, &[("x-consumer-username", "mallory")]).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.upstream_header("x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        reply.upstream_header("x-client-cert-dn").as_deref(),
        Some("CN=alice,O=Tollgate Examples")
    );
    assert_eq!(
        reply.upstream_header("x-client-cert-san").as_deref(),
        Some("alice@example.com,alice.example.com")
    );
    assert_eq!(reply.upstream_header("x-anonymous-consumer"), None);
    assert_eq!(logged_verify(&gateway, 0).await, "SUCCESS");

    let cases = [
        (
            None,
            r#"{"message":"No required TLS certificate was sent"}"#,
            "NONE",
        ),
        (
            Some(ExampleClient::Mallory),
            r#"{"message":"TLS certificate failed verification"}"#,
            "FAILED:unable to get local issuer certificate",
        ),
        (
            Some(ExampleClient::Bob),
            r#"{"message":"TLS certificate failed verification"}"#,
            "FAILED:consumer not found",
        ),
    ];
    for (index, (who, body, verify)) in cases.into_iter().enumerate() {
        let reply = get(&client(&gateway, who), &gateway, sni, &[]).await;
        assert_eq!(reply.status, 401, "{who:?}");
        assert_eq!(String::from_utf8_lossy(&reply.body), body, "{who:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{who:?}"
        );
        assert_eq!(logged_verify(&gateway, index + 1).await, verify, "{who:?}");
    }
    gateway.stop().await;
}

/// The C plugin after tls-handshake-modifier: a chain of two passes with its length upstream; a
/// leaf alone or no certificate gets 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_plugin_over_tls() {
    let gateway = TestGateway::start(&config(&format!(
        r#"
[[plugins]]
name = "handshake"
path = "{}"

[[plugins]]
name = "min-chain"
path = "{}"
order = 10
config = {{ min_chain_length = 2 }}
"#,
        plugin_file("tls-handshake-modifier"),
        plugin_file("c-min-chain"),
    )))
    .await;
    let sni = "api.example.com";
    let reply = get(
        &client(&gateway, Some(ExampleClient::Alice)),
        &gateway,
        sni,
        &[],
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.upstream_header("x-client-chain-length").as_deref(),
        Some("2")
    );
    assert_eq!(logged_verify(&gateway, 0).await, "SUCCESS");

    for (index, who) in [Some(ExampleClient::AliceLeafOnly), None]
        .into_iter()
        .enumerate()
    {
        let reply = get(&client(&gateway, who), &gateway, sni, &[]).await;
        assert_eq!(reply.status, 403, "{who:?}");
        assert_eq!(
            String::from_utf8_lossy(&reply.body),
            r#"{"message":"client certificate chain too short"}"#
        );
        assert_eq!(
            logged_verify(&gateway, index + 1).await,
            "FAILED:chain too short"
        );
    }
    gateway.stop().await;
}

/// The Python plugin after tls-handshake-modifier, with its own memory limit: the certificate
/// count goes upstream and back to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugin_over_tls() {
    let gateway = TestGateway::start(&config(&format!(
        r#"
[[plugins]]
name = "handshake"
path = "{}"

[[plugins]]
name = "cert-count"
path = "{}"
order = 10
memory_limit = "48MiB"
time_limit = "1s"
"#,
        plugin_file("tls-handshake-modifier"),
        plugin_file("py-client-cert-header"),
    )))
    .await;
    let sni = "api.example.com";
    for (who, count) in [
        (Some(ExampleClient::Alice), Some("2")),
        (Some(ExampleClient::AliceLeafOnly), Some("1")),
        (None, None),
    ] {
        let reply = get(&client(&gateway, who), &gateway, sni, &[]).await;
        assert_eq!(
            reply.status,
            200,
            "{who:?}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(
            reply.upstream_header("x-client-cert-count").as_deref(),
            count,
            "{who:?}"
        );
        assert_eq!(
            reply.header("x-client-cert-count"),
            Some(count.unwrap_or("0")),
            "{who:?}"
        );
    }
    gateway.stop().await;
}
