//! Session-ticket keys shared by a fleet, through the `tollgate` binary: three `tollgate run`
//! processes given the same ticket-key file; a session made on one resumes on the others
//! (`openssl s_client -sess_out`, then `-sess_in`, TLS 1.2 and 1.3), and the resumed connection
//! has the client's chain and `client_verify` SUCCESS. Then the keys rotate by reload: a new key
//! first, the old one kept, old tickets still resume and new ones are made with the new key;
//! once the old key is dropped, its tickets no longer resume.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tollgate_tests::binary::Tollgate;
use tollgate_tests::clients::{http_get, s_client, s_client_session};
use tollgate_tests::echo_upstream;
use tollgate_tests::{PkiFiles, TestPki, guests};

/// A replica: a TLS listener with the shared `keys` files and the PKI's client CA, a global
/// plugin that requests a client certificate and copies the chain to `x-chain`.
fn config(pki: &Path, echo: SocketAddr, keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        r#"[access_log]
target = "access.log"

[[listeners]]
name = "https"
address = "127.0.0.1:0"
client_ca = "{pki}/ca-bundle.pem"
session_ticket_keys = [{keys}]
[[listeners.certificates]]
cert = "{pki}/server.pem"
key = "{pki}/server.key"

[[services]]
name = "echo"
targets = ["{echo}"]

[[routes]]
name = "all"
service = "echo"

[[plugins]]
name = "mtls"
path = "{scripted}"
config = {{ actions = {{ certificate = [{{ call = "request_client_certificate" }}], rewrite = [{{ call = "get_full_client_certificate_chain", to_header = "x-chain" }}] }} }}
"#,
        pki = pki.display(),
        keys = keys.join(", "),
        scripted = guests::SCRIPTED,
    )
}

/// s_client's arguments for `version` with the client's chain (leaf, then the intermediate).
fn client_args(files: &PkiFiles, version: &str) -> Vec<String> {
    let mut args = vec![
        version.to_owned(),
        "-servername".to_owned(),
        "localhost".to_owned(),
    ];
    for (flag, file) in [
        ("-cert", &files.client_leaf),
        ("-cert_chain", &files.intermediate),
        ("-key", &files.client_key),
    ] {
        args.push(flag.to_owned());
        args.push(file.display().to_string());
    }
    args
}

/// What one s_client connection gave: `New` or `Reused`, and the upstream's view of the chain.
struct Visit {
    session: &'static str,
    chain: Option<String>,
    output: String,
}

/// One request over a fresh s_client connection, reading the session from `sess_in` (if given)
/// and saving it to `sess_out`.
async fn visit(
    addr: SocketAddr,
    args: &[String],
    sess_in: Option<&Path>,
    sess_out: &Path,
    uri: &str,
) -> Visit {
    let mut all: Vec<String> = args.to_vec();
    if let Some(session) = sess_in {
        all.extend(["-sess_in".to_owned(), session.display().to_string()]);
    }
    all.extend(["-sess_out".to_owned(), sess_out.display().to_string()]);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let output = s_client(addr, &all, &http_get("localhost", uri)).await;
    let chain = output
        .stdout
        .split_once("\"x-chain\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .unwrap()
                .into_owned()
        });
    Visit {
        session: s_client_session(&output.stdout).unwrap_or("none"),
        chain,
        output: output.all(),
    }
}

/// The access log entry (in `dir/access.log`) of the request for `uri`.
async fn log_entry(dir: &Path, uri: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
        if let Some(entry) = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|entry| entry["request"]["uri"] == uri)
        {
            return entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log entry for {uri}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every replica has logged `count` successful reloads.
fn wait_reloads(replicas: &[Tollgate], count: usize) {
    for replica in replicas {
        let done = tokio::task::block_in_place(|| {
            replica.wait_for_stderr(Duration::from_secs(60), |_| {
                replica
                    .stderr()
                    .iter()
                    .filter(|line| line.contains(" reloaded"))
                    .count()
                    >= count
            })
        });
        assert!(done, "no reload {count}: {:?}", replica.stderr());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_sharing_ticket_keys_resume_each_others_sessions_across_rotation() {
    let echo = echo_upstream().await;
    let shared = tempfile::tempdir().expect("temp dir");
    let pki_dir = shared.path().join("pki");
    std::fs::create_dir(&pki_dir).unwrap();
    let test_pki = TestPki::new();
    let files = test_pki.write(&pki_dir).unwrap();
    let old_key = shared.path().join("old.key");
    let new_key = shared.path().join("new.key");
    std::fs::write(&old_key, [0x11u8; 80]).unwrap();
    // A 48-byte key, nginx's other format.
    std::fs::write(&new_key, [0x22u8; 48]).unwrap();
    let (old, new) = (old_key.display().to_string(), new_key.display().to_string());

    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas: Vec<Tollgate> = dirs
        .iter()
        .map(|dir| {
            tokio::task::block_in_place(|| {
                Tollgate::run(dir.path(), &config(&pki_dir, echo, &[&old]))
            })
        })
        .collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr("https")).collect();
    let expected_chain = test_pki.client_chain_pem();
    let session_file = |name: &str| shared.path().join(format!("{name}.session"));

    for version in ["-tls1_2", "-tls1_3"] {
        let args = client_args(&files, version);
        let made = session_file(&format!("made{version}"));
        let first = visit(addrs[0], &args, None, &made, &format!("/made{version}")).await;
        assert_eq!(first.session, "New", "{}", first.output);
        for (index, addr) in addrs.iter().enumerate().skip(1) {
            let uri = format!("/resumed{version}/{index}");
            let again = visit(*addr, &args, Some(&made), &session_file("scratch"), &uri).await;
            assert_eq!(
                again.session, "Reused",
                "replica {index} resumes a session made on replica 0 ({version}): {}",
                again.output
            );
            assert_eq!(
                again.chain.as_deref(),
                Some(expected_chain.as_str()),
                "the chain after resumption"
            );
            let entry = log_entry(dirs[index].path(), &uri).await;
            assert_eq!(entry["request"]["tls"]["client_verify"], "SUCCESS");
        }
    }

    // Rotation: the new key first, the old one still listed, on every replica.
    let rotated = config(&pki_dir, echo, &[&new, &old]);
    for replica in &replicas {
        std::fs::write(&replica.config, &rotated).unwrap();
        replica.signal("HUP");
    }
    wait_reloads(&replicas, 1);
    let args = client_args(&files, "-tls1_2");
    let made_old = session_file("made-tls1_2");
    let still = visit(
        addrs[2],
        &args,
        Some(&made_old),
        &session_file("x"),
        "/still",
    )
    .await;
    assert_eq!(
        still.session, "Reused",
        "old tickets resume while the old key is listed: {}",
        still.output
    );
    let made_new = session_file("made-new");
    let fresh = visit(addrs[1], &args, None, &made_new, "/fresh").await;
    assert_eq!(fresh.session, "New");
    let resumed = visit(
        addrs[0],
        &args,
        Some(&made_new),
        &session_file("y"),
        "/fresh-resumed",
    )
    .await;
    assert_eq!(resumed.session, "Reused", "{}", resumed.output);

    // The old key dropped: its tickets no longer resume; the new key's still do.
    let only_new = config(&pki_dir, echo, &[&new]);
    for replica in &replicas {
        std::fs::write(&replica.config, &only_new).unwrap();
        replica.signal("HUP");
    }
    wait_reloads(&replicas, 2);
    let gone = visit(
        addrs[1],
        &args,
        Some(&made_old),
        &session_file("z"),
        "/gone",
    )
    .await;
    assert_eq!(gone.session, "New", "{}", gone.output);
    let kept = visit(
        addrs[2],
        &args,
        Some(&made_new),
        &session_file("w"),
        "/kept",
    )
    .await;
    assert_eq!(kept.session, "Reused", "{}", kept.output);
}
