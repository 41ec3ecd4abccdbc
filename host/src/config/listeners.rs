//! The `listeners` section: addresses, TLS certificates, and the deadlines and caps each
//! listener puts on its clients.

use super::*;

impl Checker<'_> {
    pub(super) fn listeners(
        &mut self,
        raw: Option<(Vec<Element<RawListener>>, Range<usize>)>,
    ) -> Vec<ListenerConfig> {
        let Some((raw, span)) = raw else {
            self.problem(0, "listeners", "at least one [[listeners]] is required");
            return Vec::new();
        };
        if raw.is_empty() && !self.reported("listeners") {
            self.problem(
                span.start,
                "listeners",
                "at least one [[listeners]] is required",
            );
        }
        let mut names = Names::new("listener name");
        let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
        let mut out = Vec::new();
        for Element { index, span, raw } in &raw {
            let at = format!("listeners[{index}]");
            let name = match &raw.name {
                Some(name) => {
                    self.check_name(name, &format!("{at}.name"));
                    names.add(self, name.get_ref(), name.span().start, &at);
                    name.get_ref().clone()
                }
                None => {
                    let name = format!("listener-{index}");
                    names.add(self, &name, span.start, &at);
                    name
                }
            };
            let address = self
                .required(&raw.address, &format!("{at}.address"), span)
                .and_then(|a| {
                    let field = format!("{at}.address");
                    match a.get_ref().parse::<SocketAddr>() {
                        Ok(addr) => {
                            // Port 0 asks the system for a free port each time: never a clash.
                            if addr.port() == 0 {
                            } else if let Some(first) = addresses.get(&addr) {
                                let message = format!("duplicate address {addr} (also {first})");
                                self.problem(a.span().start, field, message);
                            } else {
                                addresses.insert(addr, at.clone());
                            }
                            Some(addr)
                        }
                        Err(_) => {
                            let message = format!(
                                "invalid address `{}` (expected ip:port, e.g. 127.0.0.1:8443)",
                                a.get_ref()
                            );
                            self.problem(a.span().start, field, message);
                            None
                        }
                    }
                });
            let handshake_timeout = self.duration(
                &raw.handshake_timeout,
                &format!("{at}.handshake_timeout"),
                DEFAULT_HANDSHAKE_TIMEOUT,
                (MIN_TIMEOUT, MAX_TIMEOUT),
            );
            let limits = self.client_limits(raw, &at);
            let client_ca = raw
                .client_ca
                .as_ref()
                .map(|ca| self.file(ca, &format!("{at}.client_ca")));
            let certificates = self.certificates(raw.certificates.as_deref(), &at);
            if let Some(ca) = &raw.client_ca
                && raw.certificates.as_ref().is_none_or(|c| c.is_empty())
            {
                self.problem(
                    ca.span().start,
                    format!("{at}.client_ca"),
                    "client_ca needs a TLS listener (add [[listeners.certificates]])",
                );
            }
            let session_ticket_keys: Vec<PathBuf> = raw
                .session_ticket_keys
                .iter()
                .flat_map(|files| files.get_ref())
                .enumerate()
                .map(|(i, file)| self.file(file, &format!("{at}.session_ticket_keys[{i}]")))
                .collect();
            if let Some(files) = &raw.session_ticket_keys
                && raw.certificates.as_ref().is_none_or(|c| c.is_empty())
            {
                self.problem(
                    files.span().start,
                    format!("{at}.session_ticket_keys"),
                    "session_ticket_keys needs a TLS listener (add [[listeners.certificates]])",
                );
            }
            if let Some(address) = address {
                out.push(ListenerConfig {
                    name,
                    address,
                    handshake_timeout,
                    limits,
                    client_ca,
                    session_ticket_keys,
                    certificates,
                });
            }
        }
        out
    }

    pub(super) fn certificates(
        &mut self,
        raw: Option<&[Spanned<RawCertificate>]>,
        listener: &str,
    ) -> Vec<CertificateConfig> {
        let mut out = Vec::new();
        let mut seen_names: HashMap<String, String> = HashMap::new();
        let mut default: Option<String> = None;
        for (index, cert) in raw.unwrap_or_default().iter().enumerate() {
            let at = format!("{listener}.certificates[{index}]");
            let span = cert.span();
            let raw = cert.get_ref();
            let cert_path = self
                .required(&raw.cert, &format!("{at}.cert"), &span)
                .map(|p| self.file(p, &format!("{at}.cert")));
            let key_path = self
                .required(&raw.key, &format!("{at}.key"), &span)
                .map(|p| self.file(p, &format!("{at}.key")));
            let mut server_names = Vec::new();
            for (i, pattern) in raw
                .server_names
                .iter()
                .flat_map(|n| n.get_ref())
                .enumerate()
            {
                let field = format!("{at}.server_names[{i}]");
                let Some(normalized) = self.host_pattern(pattern, &field) else {
                    continue;
                };
                if let Some(first) = seen_names.get(&normalized) {
                    let message = format!("duplicate server name `{normalized}` (also {first})");
                    self.problem(pattern.span().start, field, message);
                } else {
                    seen_names.insert(normalized.clone(), at.clone());
                }
                server_names.push(normalized);
            }
            let unnamed = raw
                .server_names
                .as_ref()
                .is_none_or(|n| n.get_ref().is_empty());
            if unnamed {
                if let Some(first) = &default {
                    let message = format!(
                        "only one certificate may omit server_names (it is the default), also {first}"
                    );
                    self.problem(span.start, format!("{at}.server_names"), message);
                } else {
                    default = Some(at.clone());
                }
            }
            if let (Some(cert), Some(key)) = (cert_path, key_path) {
                out.push(CertificateConfig {
                    cert,
                    key,
                    server_names,
                });
            }
        }
        out
    }

    pub(super) fn client_limits(&mut self, raw: &RawListener, at: &str) -> ClientLimits {
        let timeout = |cx: &mut Self, value: &Field<toml::Value>, key: &str, default| {
            cx.duration(
                value,
                &format!("{at}.{key}"),
                default,
                (MIN_TIMEOUT, MAX_TIMEOUT),
            )
        };
        let header_timeout = timeout(
            self,
            &raw.header_timeout,
            "header_timeout",
            DEFAULT_HEADER_TIMEOUT,
        );
        let keepalive_timeout = timeout(
            self,
            &raw.keepalive_timeout,
            "keepalive_timeout",
            DEFAULT_KEEPALIVE_TIMEOUT,
        );
        let body_timeout = timeout(
            self,
            &raw.body_timeout,
            "body_timeout",
            DEFAULT_BODY_TIMEOUT,
        );
        let send_timeout = timeout(
            self,
            &raw.send_timeout,
            "send_timeout",
            DEFAULT_SEND_TIMEOUT,
        );
        let http2_ping_interval = timeout(
            self,
            &raw.http2_ping_interval,
            "http2_ping_interval",
            DEFAULT_HTTP2_PING_INTERVAL,
        );
        let http2_ping_timeout = timeout(
            self,
            &raw.http2_ping_timeout,
            "http2_ping_timeout",
            DEFAULT_HTTP2_PING_TIMEOUT,
        );
        let max_header_size = self.size(
            &raw.max_header_size,
            &format!("{at}.max_header_size"),
            DEFAULT_MAX_HEADER_SIZE,
            (MIN_MAX_HEADER_SIZE, MAX_MAX_HEADER_SIZE),
        );
        let max_body_size = self.size(
            &raw.max_body_size,
            &format!("{at}.max_body_size"),
            DEFAULT_MAX_BODY_SIZE,
            (0, u64::MAX),
        );
        let max_headers = self.count(
            &raw.max_headers,
            &format!("{at}.max_headers"),
            DEFAULT_MAX_HEADERS,
            (1, MAX_MAX_HEADERS),
        );
        let max_connections = self.count(
            &raw.max_connections,
            &format!("{at}.max_connections"),
            DEFAULT_MAX_CONNECTIONS,
            (1, MAX_MAX_CONNECTIONS),
        );
        let http2_max_streams = self.count(
            &raw.http2_max_streams,
            &format!("{at}.http2_max_streams"),
            DEFAULT_HTTP2_MAX_STREAMS,
            (1, u64::from(u32::MAX)),
        );
        let http2_max_resets = self.count(
            &raw.http2_max_resets,
            &format!("{at}.http2_max_resets"),
            DEFAULT_HTTP2_MAX_RESETS,
            (1, u64::from(u32::MAX)),
        );
        let int = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        ClientLimits {
            header_timeout,
            keepalive_timeout,
            body_timeout,
            send_timeout,
            max_header_size: int(max_header_size),
            max_headers: int(max_headers),
            max_body_size,
            max_connections: int(max_connections),
            http2_max_streams: small(http2_max_streams),
            http2_max_resets: small(http2_max_resets),
            http2_ping_interval,
            http2_ping_timeout,
        }
    }
}
