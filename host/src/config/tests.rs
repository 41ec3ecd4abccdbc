use super::*;

/// A directory holding the files the example configuration refers to.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "certs/server.pem",
        "certs/server.key",
        "certs/api.pem",
        "certs/api.key",
        "certs/ca.pem",
        "certs/upstream-ca.pem",
        "plugins/mtls_auth.wasm",
        "plugins/rate_limit.wasm",
    ] {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    dir
}

const FULL: &str = r#"
[access_log]
target = "logs/access.log"

[[listeners]]
name = "https"
address = "127.0.0.1:8443"
handshake_timeout = "250ms"
header_timeout = "5s"
max_body_size = 0
max_connections = 10
client_ca = "certs/ca.pem"
[[listeners.certificates]]
cert = "certs/api.pem"
key = "certs/api.key"
server_names = ["API.example.com", "*.example.com"]
[[listeners.certificates]]
cert = "certs/server.pem"
key = "certs/server.key"

[[listeners]]
address = "[::1]:8080"

[[services]]
name = "echo"
targets = ["127.0.0.1:9000", "backend.internal:9001", "[::1]:9002"]
connect_timeout = "2s"

[[services]]
name = "secure"
targets = ["10.0.0.1:443"]
protocol = "https"
read_timeout = "2m"
body_timeout = "5s"
retries = 3
tls_verify = false
ca = "certs/upstream-ca.pem"

[[routes]]
name = "api"
hosts = ["api.example.com", "*.Example.com"]
paths = ["/api", "/v1"]
methods = ["get", "POST"]
service = "echo"

[[routes]]
service = "secure"

[[plugins]]
name = "mtls"
path = "plugins/mtls_auth.wasm"
config = { ca_certificates = "pem", snis = ["*"], nested = { depth = 2, ratio = 0.5, on = true } }
route = "api"
order = 10
fail_open = true
memory_limit = "16MiB"
time_limit = "250ms"

[[plugins]]
path = "plugins/rate_limit.wasm"
service = "secure"
memory_limit = 2097152

[[plugins]]
name = "mtls-global"
path = "plugins/mtls_auth.wasm"
order = -1
"#;

fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &dir.join("tollgate.toml"))
}

/// The rendered problems, with the fixture directory replaced by `$DIR`.
fn rendered(dir: &Path, text: &str) -> Vec<String> {
    let error = parse_in(dir, text).unwrap_err();
    error
        .to_string()
        .replace(&dir.display().to_string(), "$DIR")
        .lines()
        .map(str::to_owned)
        .collect()
}

const MINIMAL_LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n";

#[test]
fn full_example_resolves_to_expected_structures() {
    let dir = fixture();
    let d = dir.path();
    let config = parse_in(d, FULL).unwrap();

    assert_eq!(
        config.access_log,
        AccessLogTarget::File(d.join("logs/access.log"))
    );

    assert_eq!(
        config.listeners,
        vec![
            ListenerConfig {
                name: "https".into(),
                address: "127.0.0.1:8443".parse().unwrap(),
                handshake_timeout: Duration::from_millis(250),
                limits: ClientLimits {
                    header_timeout: Duration::from_secs(5),
                    max_body_size: 0,
                    max_connections: 10,
                    ..ClientLimits::default()
                },
                client_ca: Some(d.join("certs/ca.pem")),
                session_ticket_keys: vec![],
                certificates: vec![
                    CertificateConfig {
                        cert: d.join("certs/api.pem"),
                        key: d.join("certs/api.key"),
                        server_names: vec!["api.example.com".into(), "*.example.com".into()],
                    },
                    CertificateConfig {
                        cert: d.join("certs/server.pem"),
                        key: d.join("certs/server.key"),
                        server_names: vec![],
                    },
                ],
            },
            ListenerConfig {
                name: "listener-1".into(),
                address: "[::1]:8080".parse().unwrap(),
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                limits: ClientLimits::default(),
                client_ca: None,
                session_ticket_keys: vec![],
                certificates: vec![],
            },
        ]
    );
    assert!(config.listeners[0].is_tls());
    assert!(!config.listeners[1].is_tls());
    assert_eq!(
        config.listeners[0].default_certificate().unwrap().cert,
        d.join("certs/server.pem")
    );

    let target = |host: &str, port: u16| {
        let text = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Target::parse(&text).unwrap()
    };
    assert_eq!(
        config.services,
        vec![
            ServiceConfig {
                name: "echo".into(),
                targets: vec![
                    target("127.0.0.1", 9000),
                    target("backend.internal", 9001),
                    target("::1", 9002),
                ],
                protocol: Protocol::Http,
                connect_timeout: Duration::from_secs(2),
                read_timeout: DEFAULT_READ_TIMEOUT,
                body_timeout: DEFAULT_BODY_TIMEOUT,
                retries: 2,
                tls_verify: true,
                ca: None,
            },
            ServiceConfig {
                name: "secure".into(),
                targets: vec![target("10.0.0.1", 443)],
                protocol: Protocol::Https,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                read_timeout: Duration::from_secs(120),
                body_timeout: Duration::from_secs(5),
                retries: 3,
                tls_verify: false,
                ca: Some(d.join("certs/upstream-ca.pem")),
            },
        ]
    );
    assert_eq!(config.services[0].targets[2].to_string(), "[::1]:9002");

    assert_eq!(
        config.routes,
        vec![
            RouteConfig {
                name: "api".into(),
                hosts: vec!["api.example.com".into(), "*.example.com".into()],
                paths: vec!["/api".into(), "/v1".into()],
                methods: vec!["GET".into(), "POST".into()],
                service: "echo".into(),
            },
            RouteConfig {
                name: "route-1".into(),
                hosts: vec![],
                paths: vec![],
                methods: vec![],
                service: "secure".into(),
            },
        ]
    );

    // Sorted by order, ties in file order; the same wasm twice under two names.
    assert_eq!(
        config.plugins,
        vec![
            PluginConfig {
                name: "mtls-global".into(),
                path: d.join("plugins/mtls_auth.wasm"),
                config: serde_json::json!({}),
                attached_to: PluginAttachment::Global,
                order: -1,
                fail_open: false,
                memory_limit: 64 << 20,
                time_limit: DEFAULT_TIME_LIMIT,
            },
            PluginConfig {
                name: "rate_limit".into(),
                path: d.join("plugins/rate_limit.wasm"),
                config: serde_json::json!({}),
                attached_to: PluginAttachment::Service("secure".into()),
                order: 0,
                fail_open: false,
                memory_limit: 2 << 20,
                time_limit: DEFAULT_TIME_LIMIT,
            },
            PluginConfig {
                name: "mtls".into(),
                path: d.join("plugins/mtls_auth.wasm"),
                config: serde_json::json!({
                    "ca_certificates": "pem",
                    "snis": ["*"],
                    "nested": { "depth": 2, "ratio": 0.5, "on": true },
                }),
                attached_to: PluginAttachment::Route("api".into()),
                order: 10,
                fail_open: true,
                memory_limit: 16 << 20,
                time_limit: Duration::from_millis(250),
            },
        ]
    );
}

#[test]
fn defaults_for_a_minimal_file() {
    let dir = fixture();
    let config = parse_in(dir.path(), MINIMAL_LISTENER).unwrap();
    assert_eq!(config.access_log, AccessLogTarget::Stdout);
    assert_eq!(config.listeners[0].name, "listener-0");
    assert!(config.services.is_empty() && config.routes.is_empty());
    assert!(config.plugins.is_empty());

    let targets: Vec<String> = (1..=8).map(|p| format!("\"h:{p}\"")).collect();
    let text = format!(
        "{MINIMAL_LISTENER}[[services]]\nname = \"many\"\ntargets = [{}]\n",
        targets.join(", ")
    );
    let config = parse_in(dir.path(), &text).unwrap();
    assert_eq!(config.services[0].retries, MAX_DEFAULT_RETRIES);
    assert_eq!(config.services[0].connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(config.services[0].body_timeout, DEFAULT_BODY_TIMEOUT);
}

#[test]
fn client_limits_default_to_nginxs() {
    let dir = fixture();
    let config = parse_in(dir.path(), MINIMAL_LISTENER).unwrap();
    let limits = &config.listeners[0].limits;
    assert_eq!(limits, &ClientLimits::default());
    assert_eq!(limits.header_timeout, Duration::from_secs(60));
    assert_eq!(limits.keepalive_timeout, Duration::from_secs(75));
    assert_eq!(limits.body_timeout, Duration::from_secs(60));
    assert_eq!(limits.send_timeout, Duration::from_secs(60));
    assert_eq!(limits.max_header_size, 32 << 10);
    assert_eq!(limits.max_headers, 100);
    assert_eq!(limits.max_body_size, 1 << 20);
    assert_eq!(limits.http2_max_streams, 128);
    assert!(config.trusted_ips.is_empty());
    assert_eq!(config.strip_client_headers, ["x-client-cert*", "x-ssl-*"]);
}

#[test]
fn client_limits_are_read_and_checked() {
    let dir = fixture();
    let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\nheader_timeout = \"2s\"\n\
                keepalive_timeout = \"3s\"\nbody_timeout = \"4s\"\nsend_timeout = \"5s\"\n\
                max_header_size = \"16KiB\"\nmax_headers = 50\nmax_body_size = \"8MiB\"\n\
                max_connections = 7\nhttp2_max_streams = 9\nhttp2_max_resets = 11\n\
                http2_ping_interval = \"6s\"\nhttp2_ping_timeout = \"1s\"\n";
    let config = parse_in(dir.path(), text).unwrap();
    assert_eq!(
        config.listeners[0].limits,
        ClientLimits {
            header_timeout: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(3),
            body_timeout: Duration::from_secs(4),
            send_timeout: Duration::from_secs(5),
            max_header_size: 16 << 10,
            max_headers: 50,
            max_body_size: 8 << 20,
            max_connections: 7,
            http2_max_streams: 9,
            http2_max_resets: 11,
            http2_ping_interval: Duration::from_secs(6),
            http2_ping_timeout: Duration::from_secs(1),
        }
    );

    let bad = "[[listeners]]\naddress = \"127.0.0.1:1\"\nheader_timeout = 5\n\
               max_header_size = \"1KiB\"\nmax_headers = 0\nmax_connections = -1\n\
               http2_max_resets = \"many\"\n";
    assert_eq!(
        rendered(dir.path(), bad),
        vec![
            "$DIR/tollgate.toml:3:18: listeners[0].header_timeout: a duration needs a unit: write \"5s\" or \"5ms\"",
            "$DIR/tollgate.toml:4:19: listeners[0].max_header_size: must be between 8KiB and 1MiB",
            "$DIR/tollgate.toml:5:15: listeners[0].max_headers: must be between 1 and 10000",
            "$DIR/tollgate.toml:6:19: listeners[0].max_connections: must be between 1 and 1000000",
            "$DIR/tollgate.toml:7:20: listeners[0].http2_max_resets: invalid type: string \"many\", expected i64",
        ]
    );
}

#[test]
fn trusted_ips_and_stripped_headers_are_checked() {
    let dir = fixture();
    let text = format!(
        "trusted_ips = [\"10.0.0.0/8\", \"::1\"]\nstrip_client_headers = [\"X-Secret\", \"x-auth-*\"]\n\
         {MINIMAL_LISTENER}"
    );
    let config = parse_in(dir.path(), &text).unwrap();
    let trusted: Vec<String> = config.trusted_ips.iter().map(ToString::to_string).collect();
    assert_eq!(trusted, ["10.0.0.0/8", "::1/128"]);
    assert_eq!(config.strip_client_headers, ["x-secret", "x-auth-*"]);

    let empty = format!("strip_client_headers = []\n{MINIMAL_LISTENER}");
    assert!(
        parse_in(dir.path(), &empty)
            .unwrap()
            .strip_client_headers
            .is_empty()
    );

    let bad = format!(
        "trusted_ips = [\"10.0.0.0/33\", \"nope\"]\nstrip_client_headers = [\"*\", \"bad name\"]\n\
         {MINIMAL_LISTENER}"
    );
    let lines = rendered(dir.path(), &bad);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[0].starts_with("$DIR/tollgate.toml:1:16: trusted_ips[0]: invalid IP address"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("$DIR/tollgate.toml:1:31: trusted_ips[1]: invalid IP address"),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with(
            "$DIR/tollgate.toml:2:25: strip_client_headers[0]: invalid header pattern"
        ),
        "{lines:?}"
    );
    assert!(
        lines[3].starts_with(
            "$DIR/tollgate.toml:2:30: strip_client_headers[1]: invalid header pattern"
        ),
        "{lines:?}"
    );
}

#[test]
fn duplicate_key_is_a_syntax_error_quoting_the_key() {
    let dir = fixture();
    let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\naddress = \"x\"\n";
    assert_eq!(
        rendered(dir.path(), text),
        vec!["$DIR/tollgate.toml:3:1: duplicate key (at `address`)"]
    );
}

#[test]
fn load_reads_the_file_and_resolves_against_its_directory() {
    let dir = fixture();
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, FULL).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(
        config.plugins[2].path,
        dir.path().join("plugins/mtls_auth.wasm")
    );
}

#[test]
fn unreadable_file_names_the_file() {
    let dir = fixture();
    let path = dir.path().join("missing.toml");
    let error = Config::load(&path).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("{}: cannot read configuration: ", path.display())),
        "{text}"
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let dir = fixture();
    let text = "[[listeners]]\naddress = \"127.0.0.1:8080\nname = 1\n";
    let error = parse_in(dir.path(), text).unwrap_err();
    let problems = error.problems();
    assert_eq!(problems.len(), 1, "{error}");
    assert_eq!((problems[0].line, problems[0].field.as_str()), (2, ""));
    assert!(error.to_string().starts_with(&format!(
        "{}:2:",
        dir.path().join("tollgate.toml").display()
    )));
}

#[test]
fn unknown_key_is_named_with_its_position() {
    let dir = fixture();
    let text =
        format!("{MINIMAL_LISTENER}\n[[plugins]]\npath = \"plugins/mtls_auth.wasm\"\nordr = 1\n");
    let lines = rendered(dir.path(), &text);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "$DIR/tollgate.toml:6:1: plugins[0].ordr: unknown field `ordr`, expected one of"
        ),
        "{lines:?}"
    );
}

#[test]
fn unknown_section_and_nested_unknown_key() {
    let dir = fixture();
    let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[listeners.certificates]]\n\
                    cert = \"certs/server.pem\"\nkey = \"certs/server.key\"\nsni = [\"a\"]\n\
                    [upstreams]\nx = 1\n";
    let lines = rendered(dir.path(), text);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "$DIR/tollgate.toml:6:1: listeners[0].certificates[0].sni: unknown field `sni`"
        ),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        "$DIR/tollgate.toml:7:2: upstreams: unknown section `upstreams`, expected one of \
             `trusted_ips`, `strip_client_headers`, `pid_file`, `drain_timeout`, `workers`, \
             `admin`, `access_log`, `runtime`, `listeners`, `services`, `routes`, `plugins`"
    );
}

#[test]
fn workers_is_a_count_of_connection_threads() {
    let dir = fixture();
    let unset = parse_in(dir.path(), MINIMAL_LISTENER).unwrap();
    assert_eq!(unset.workers, None, "one per core unless set");
    let set = parse_in(dir.path(), &format!("workers = 3\n{MINIMAL_LISTENER}")).unwrap();
    assert_eq!(set.workers, Some(3));
    let lines = rendered(dir.path(), &format!("workers = 0\n{MINIMAL_LISTENER}"));
    assert_eq!(
        lines,
        vec!["$DIR/tollgate.toml:1:11: workers: must be between 1 and 1024"]
    );
}

#[test]
fn wrong_types_are_reported_per_field() {
    let dir = fixture();
    let text = format!(
        "{MINIMAL_LISTENER}[[services]]\nname = \"s\"\ntargets = [\"a:1\", 5]\nretries = \"two\"\n\
             tls_verify = \"yes\"\nprotocol = \"ftp\"\n"
    );
    let lines = rendered(dir.path(), &text);
    assert_eq!(
        lines,
        vec![
            "$DIR/tollgate.toml:5:19: services[0].targets[1]: invalid type: integer `5`, expected a string",
            "$DIR/tollgate.toml:6:11: services[0].retries: invalid type: string \"two\", expected i64",
            "$DIR/tollgate.toml:7:14: services[0].tls_verify: invalid type: string \"yes\", expected a boolean",
            "$DIR/tollgate.toml:8:12: services[0].protocol: unknown variant `ftp`, expected `http` or `https`",
        ],
    );
}

#[test]
fn missing_file_gives_resolved_path() {
    let dir = fixture();
    let text =
        format!("{MINIMAL_LISTENER}\n[[plugins]]\nname = \"p\"\npath = \"plugins/nope.wasm\"\n");
    assert_eq!(
        rendered(dir.path(), &text),
        vec!["$DIR/tollgate.toml:6:8: plugins[0].path: file not found: $DIR/plugins/nope.wasm"]
    );
}

#[test]
fn bad_values_are_all_reported_in_file_order() {
    let dir = fixture();
    let text = r#"
[access_log]
target = "no-such-dir/access.log"

[[listeners]]
address = "localhost:8443"
handshake_timeout = "10"

[[listeners]]
name = "b"
address = "127.0.0.1:9000"
client_ca = "certs/ca.pem"

[[listeners]]
name = "b"
address = "127.0.0.1:9000"
[[listeners.certificates]]
cert = "certs/server.pem"
key = "certs/missing.key"
server_names = ["bad host"]
[[listeners.certificates]]
cert = "certs/server.pem"
key = "certs/server.key"

[[services]]
name = "echo"
targets = ["127.0.0.1", "::1:80", "host:0"]
tls_verify = false
connect_timeout = 5

[[services]]
name = "echo"

[[routes]]
name = "api"
hosts = ["*.*.example.com"]
paths = ["api"]
methods = ["GE T"]
service = "nope"

[[plugins]]
path = "plugins/mtls_auth.wasm"
route = "missing-route"
memory_limit = "512KiB"
time_limit = "2m"

[[plugins]]
path = "plugins/mtls_auth.wasm"
route = "api"
service = "echo"
memory_limit = "1TB"
"#;
    let lines = rendered(dir.path(), text);
    let expected = vec![
        "$DIR/tollgate.toml:3:10: access_log.target: directory not found: $DIR/no-such-dir",
        "$DIR/tollgate.toml:6:11: listeners[0].address: invalid address `localhost:8443` (expected ip:port, e.g. 127.0.0.1:8443)",
        "$DIR/tollgate.toml:7:21: listeners[0].handshake_timeout: invalid duration `10` (expected e.g. \"250ms\", \"10s\", \"2m\")",
        "$DIR/tollgate.toml:12:13: listeners[1].client_ca: client_ca needs a TLS listener (add [[listeners.certificates]])",
        "$DIR/tollgate.toml:15:8: listeners[2].name: duplicate listener name `b` (also listeners[1])",
        "$DIR/tollgate.toml:16:11: listeners[2].address: duplicate address 127.0.0.1:9000 (also listeners[1])",
        "$DIR/tollgate.toml:19:7: listeners[2].certificates[0].key: file not found: $DIR/certs/missing.key",
        "$DIR/tollgate.toml:20:17: listeners[2].certificates[0].server_names[0]: invalid host pattern `bad host` (expected a host name, optionally starting with \"*.\")",
        "$DIR/tollgate.toml:27:12: services[0].targets[0]: invalid target \"127.0.0.1\": expected host:port (or [ipv6]:port)",
        "$DIR/tollgate.toml:27:25: services[0].targets[1]: invalid target \"::1:80\": an IPv6 address needs brackets: [ipv6]:port",
        "$DIR/tollgate.toml:27:35: services[0].targets[2]: invalid target \"host:0\": the port must be 1 to 65535",
        "$DIR/tollgate.toml:28:14: services[0].tls_verify: only valid for protocol = \"https\"",
        "$DIR/tollgate.toml:29:19: services[0].connect_timeout: a duration needs a unit: write \"5s\" or \"5ms\"",
        "$DIR/tollgate.toml:31:1: services[1].targets: required field is missing",
        "$DIR/tollgate.toml:32:8: services[1].name: duplicate service name `echo` (also services[0])",
        "$DIR/tollgate.toml:36:10: routes[0].hosts[0]: invalid host pattern `*.*.example.com` (expected a host name, optionally starting with \"*.\")",
        "$DIR/tollgate.toml:37:10: routes[0].paths[0]: path must start with \"/\": `api`",
        "$DIR/tollgate.toml:38:12: routes[0].methods[0]: invalid HTTP method `GE T`",
        "$DIR/tollgate.toml:39:11: routes[0].service: no service named `nope`",
        "$DIR/tollgate.toml:43:9: plugins[0].route: no route named `missing-route`",
        "$DIR/tollgate.toml:44:16: plugins[0].memory_limit: must be between 1MiB and 1GiB",
        "$DIR/tollgate.toml:45:14: plugins[0].time_limit: must be between 1ms and 1m",
        "$DIR/tollgate.toml:48:8: plugins[1].name: plugin name `mtls_auth` (from the file name) is already used by plugins[0]; give this instance a distinct `name`",
        "$DIR/tollgate.toml:50:11: plugins[1].service: a plugin is scoped to a route or a service, not both",
        "$DIR/tollgate.toml:51:16: plugins[1].memory_limit: invalid size `1TB` (expected e.g. \"64MiB\", \"512KiB\" or bytes)",
    ];
    assert_eq!(lines, expected);
}

#[test]
fn at_least_one_listener() {
    let dir = fixture();
    assert_eq!(
        rendered(dir.path(), "[access_log]\ntarget = \"stdout\"\n"),
        vec!["$DIR/tollgate.toml:1:1: listeners: at least one [[listeners]] is required"]
    );
}

#[test]
fn several_unknown_keys_in_one_table_are_all_reported() {
    let dir = fixture();
    let text = "[[listeners]]\nadress = \"127.0.0.1:1\"\nnmae = \"x\"\n";
    let fields: Vec<String> = parse_in(dir.path(), text)
        .unwrap_err()
        .problems()
        .iter()
        .map(|p| p.field.clone())
        .collect();
    assert_eq!(
        fields,
        [
            "listeners[0].address",
            "listeners[0].adress",
            "listeners[0].nmae"
        ]
    );
}

#[test]
fn duration_size_and_position_helpers() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("1.5s").is_err());
    assert!(parse_duration("s").is_err());
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("1MB").is_err());
    assert_eq!(line_column("ab\ncdé\nf", 7), (2, 4));
}
