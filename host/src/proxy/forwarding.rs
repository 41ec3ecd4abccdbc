//! Header hygiene for a reverse proxy: what a request and a response lose and gain when
//! Tollgate forwards them (RFC 9110 §7.6.1, §7.6.2), which client-sent headers are believed,
//! and the URI sent upstream.
//!
//! Identity headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`) are only believed from a peer in
//! `trusted_ips` (a load balancer in front, say); from anyone else they are removed before
//! plugins run and replaced by Tollgate's own when the request goes upstream. Headers matching
//! `strip_client_headers` (by default the `X-Client-Cert*` and `X-SSL-*` families, which carry
//! client certificates between proxies) are removed from every client, trusted or not, so only a
//! plugin can set them.
//!
//! ```
//! # use std::net::{IpAddr, Ipv4Addr};
//! # use http::{HeaderMap, HeaderValue, Uri};
//! # use tollgate::proxy::forwarding::{ClientHeaderPolicy, ForwardedFacts, add_forwarded, strip_hop_by_hop, upstream_uri};
//! let client = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
//! let mut headers = HeaderMap::new();
//! headers.insert("connection", HeaderValue::from_static("close, x-secret"));
//! headers.insert("x-secret", HeaderValue::from_static("1"));
//! headers.insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
//! headers.insert("x-client-cert", HeaderValue::from_static("forged"));
//! strip_hop_by_hop(&mut headers);
//! let trusted = ClientHeaderPolicy::default().sanitize(&mut headers, client);
//! let facts = ForwardedFacts { client_ip: client, proto: "https", host: Some("api.test"), port: 443 };
//! add_forwarded(&mut headers, &facts, trusted);
//! assert!(headers.get("x-secret").is_none());
//! assert!(headers.get("x-client-cert").is_none());
//! assert_eq!(headers["x-forwarded-for"], "203.0.113.7");
//!
//! let uri = upstream_uri(&Uri::from_static("/v1/users?page=2"), "10.0.0.5:8080", false).unwrap();
//! assert_eq!(uri, "http://10.0.0.5:8080/v1/users?page=2");
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Uri};

/// `X-Forwarded-For`: the chain of client addresses, the latest appended.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used to reach Tollgate.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the host the client asked for.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Port`: the port the client connected to.
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Real-IP`: the client's address.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `Forwarded` (RFC 7239).
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// An IP address or CIDR block, as written in `trusted_ips`: `192.0.2.7`, `10.0.0.0/8`, `::1`,
/// `2001:db8::/32`. Host bits below the prefix are ignored. IPv4 ranges also match IPv4-mapped
/// IPv6 addresses (`::ffff:10.1.2.3`, seen on dual-stack listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid =
            || format!("invalid IP address or CIDR block `{text}` (expected e.g. \"10.0.0.0/8\")");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = address
            .parse::<IpAddr>()
            .map_err(|_| invalid())?
            .to_canonical();
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => {
                match digits.parse::<u8>() {
                    Ok(prefix) if prefix <= bits => prefix,
                    _ => return Err(invalid()),
                }
            }
            Some(_) => return Err(invalid()),
        };
        Ok(IpRange { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Which client-sent headers Tollgate believes: see the module docs.
#[derive(Debug, Clone)]
pub struct ClientHeaderPolicy {
    trusted_ips: Vec<IpRange>,
    /// Lower-case names; a trailing `*` matches any suffix.
    strip: Vec<String>,
}

impl Default for ClientHeaderPolicy {
    /// No trusted peer; the default `strip_client_headers`.
    fn default() -> Self {
        ClientHeaderPolicy::new(
            Vec::new(),
            crate::config::DEFAULT_STRIP_CLIENT_HEADERS
                .map(str::to_owned)
                .to_vec(),
        )
    }
}

impl ClientHeaderPolicy {
    /// A policy trusting `trusted_ips` and removing headers that match `strip` (lower-case
    /// names, each optionally ending in `*`).
    pub fn new(trusted_ips: Vec<IpRange>, strip: Vec<String>) -> Self {
        let strip = strip.into_iter().map(|p| p.to_ascii_lowercase()).collect();
        ClientHeaderPolicy { trusted_ips, strip }
    }

    /// Whether the identity headers of `peer` are believed.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted_ips.iter().any(|range| range.contains(peer))
    }

    /// Removes from a client's request the headers matching `strip_client_headers` and, unless
    /// `peer` is trusted, `X-Forwarded-*`, `Forwarded` and `X-Real-IP`. Returns whether `peer`
    /// is trusted (for [`add_forwarded`]).
    pub fn sanitize(&self, headers: &mut HeaderMap, peer: IpAddr) -> bool {
        let trusted = self.is_trusted(peer);
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                let name = name.as_str();
                let identity =
                    name.starts_with("x-forwarded-") || *name == FORWARDED || *name == X_REAL_IP;
                (!trusted && identity) || self.strip.iter().any(|p| pattern_matches(p, name))
            })
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
        trusted
    }
}

/// `name` against a lower-case pattern with an optional trailing `*`.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Hop-by-hop headers that are always removed, whether or not `Connection` names them.
const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes the headers that describe one connection rather than the message: the fixed
/// hop-by-hop set (`Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`) and every header the `Connection` header names.
/// Apply to requests before they go upstream and to responses before they go to the client;
/// hyper sets the framing headers (`Transfer-Encoding`, `Content-Length`) for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// What the upstream is told about the original request.
#[derive(Debug, Clone, Copy)]
pub struct ForwardedFacts<'a> {
    /// The peer's address.
    pub client_ip: IpAddr,
    /// The scheme the client used to reach Tollgate.
    pub proto: &'a str,
    /// The host the client asked for, if any.
    pub host: Option<&'a str>,
    /// The port the client connected to.
    pub port: u16,
}

/// Adds what the upstream needs to know about the original request: `client_ip` appended to
/// `X-Forwarded-For` (joining the values a trusted peer sent into one header, as nginx's
/// `$proxy_add_x_forwarded_for` does), and `X-Forwarded-Proto`, `X-Forwarded-Host`,
/// `X-Forwarded-Port` and `X-Real-IP` set from `facts`. From a `trusted` peer, values it sent
/// for those four are kept; from anyone else, whatever the client sent is replaced (with `host`
/// `None`, `X-Forwarded-Host` is removed) and its `X-Forwarded-For` chain dropped.
///
/// IPv4-mapped IPv6 addresses (`::ffff:203.0.113.7`, seen on dual-stack listeners) are written
/// in IPv4 form. Values that are not valid header text are skipped rather than forwarded.
pub fn add_forwarded(headers: &mut HeaderMap, facts: &ForwardedFacts<'_>, trusted: bool) {
    let client = facts.client_ip.to_canonical().to_string();
    let mut chain = Vec::new();
    if trusted {
        for value in headers.get_all(&X_FORWARDED_FOR) {
            let value = value.as_bytes().trim_ascii();
            if !value.is_empty() {
                chain.extend_from_slice(value);
                chain.extend_from_slice(b", ");
            }
        }
    }
    chain.extend_from_slice(client.as_bytes());
    let chain = HeaderValue::from_bytes(&chain)
        // Only reachable if a client value was invalid, which HeaderMap already rules out.
        .or_else(|_| HeaderValue::from_str(&client));
    if let Ok(chain) = chain {
        headers.insert(X_FORWARDED_FOR, chain);
    }

    let mut set = |name: HeaderName, value: Option<HeaderValue>| {
        if trusted && headers.contains_key(&name) {
            return;
        }
        match value {
            Some(value) => headers.insert(name, value),
            None => headers.remove(name),
        };
    };
    set(X_FORWARDED_PROTO, HeaderValue::from_str(facts.proto).ok());
    set(
        X_FORWARDED_HOST,
        facts.host.and_then(|host| HeaderValue::from_str(host).ok()),
    );
    set(X_FORWARDED_PORT, Some(HeaderValue::from(facts.port)));
    set(X_REAL_IP, HeaderValue::from_str(&client).ok());
}

/// The URI for the upstream request: `http(s)://<target>` plus the original path and query
/// (`/` when the original has none). Works for origin-form (HTTP/1.1) and absolute-form /
/// `:authority` (HTTP/2) originals alike. [`super::upstream::Upstream::send`] turns it back into
/// origin-form on the wire and derives `Host` from it when the request has none.
///
/// Fails if `target` is not a valid `host:port` authority.
pub fn upstream_uri(original: &Uri, target: &str, https: bool) -> Result<Uri, http::Error> {
    let path_and_query = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(if https { Scheme::HTTPS } else { Scheme::HTTP })
        .authority(target)
        .path_and_query(path_and_query)
        .build()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn strip_removes_fixed_hop_by_hop_set() {
        let mut map = headers(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-type", "text/plain"),
            ("x-client-cert", "abc"),
        ]);
        strip_hop_by_hop(&mut map);
        let left: Vec<_> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type", "x-client-cert"]);
    }

    #[test]
    fn strip_removes_headers_named_in_connection() {
        let mut map = headers(&[
            ("connection", "close, X-Secret"),
            ("connection", " x-other ,,"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut map);
        let left: Vec<_> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn strip_ignores_invalid_connection_tokens() {
        let mut map = headers(&[("connection", "bad name, x-a"), ("x-a", "1"), ("x-b", "2")]);
        strip_hop_by_hop(&mut map);
        assert!(map.get("x-a").is_none());
        assert_eq!(map["x-b"], "2");
    }

    fn facts(
        client_ip: IpAddr,
        proto: &'static str,
        host: Option<&'static str>,
    ) -> ForwardedFacts<'static> {
        ForwardedFacts {
            client_ip,
            proto,
            host,
            port: 8443,
        }
    }

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn forwarded_headers_are_created() {
        let mut map = HeaderMap::new();
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        add_forwarded(&mut map, &facts(client, "https", Some("api.test")), false);
        assert_eq!(map[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(map[&X_FORWARDED_PROTO], "https");
        assert_eq!(map[&X_FORWARDED_HOST], "api.test");
        assert_eq!(map[&X_FORWARDED_PORT], "8443");
        assert_eq!(map[&X_REAL_IP], "192.0.2.1");
    }

    #[test]
    fn a_trusted_peers_chain_is_appended_to() {
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.1, 198.51.100.2"),
            ("x-forwarded-for", "198.51.100.3 "),
        ]);
        add_forwarded(
            &mut map,
            &facts(IpAddr::V6(Ipv6Addr::LOCALHOST), "http", None),
            true,
        );
        let all: Vec<_> = map.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["198.51.100.1, 198.51.100.2, 198.51.100.3, ::1"]);
    }

    #[test]
    fn an_untrusted_peers_values_are_replaced() {
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil.test"),
            ("x-forwarded-port", "1"),
            ("x-real-ip", "10.6.6.6"),
        ]);
        add_forwarded(&mut map, &facts(LOCALHOST, "http", None), false);
        assert_eq!(map[&X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(map[&X_FORWARDED_PROTO], "http");
        assert!(map.get(&X_FORWARDED_HOST).is_none());
        assert_eq!(map[&X_FORWARDED_PORT], "8443");
        assert_eq!(map[&X_REAL_IP], "127.0.0.1");

        add_forwarded(
            &mut map,
            &facts(LOCALHOST, "https", Some("good.test")),
            false,
        );
        assert_eq!(map.get_all(&X_FORWARDED_HOST).iter().count(), 1);
        assert_eq!(map[&X_FORWARDED_HOST], "good.test");
    }

    #[test]
    fn a_trusted_peers_values_are_kept() {
        let mut map = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.test"),
            ("x-forwarded-port", "443"),
            ("x-real-ip", "198.51.100.1"),
        ]);
        add_forwarded(
            &mut map,
            &facts(LOCALHOST, "http", Some("inner.test")),
            true,
        );
        assert_eq!(map[&X_FORWARDED_PROTO], "https");
        assert_eq!(map[&X_FORWARDED_HOST], "public.test");
        assert_eq!(map[&X_FORWARDED_PORT], "443");
        assert_eq!(map[&X_REAL_IP], "198.51.100.1");
        assert_eq!(map[&X_FORWARDED_FOR], "127.0.0.1");
    }

    #[test]
    fn forwarded_for_writes_mapped_ipv6_as_ipv4() {
        let mut map = HeaderMap::new();
        let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped());
        add_forwarded(&mut map, &facts(mapped, "http", None), false);
        assert_eq!(map[&X_FORWARDED_FOR], "203.0.113.9");
    }

    fn range(text: &str) -> IpRange {
        text.parse().unwrap_or_else(|err| panic!("{err}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    #[test]
    fn ip_ranges_match_their_block() {
        assert!(range("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!range("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(range("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!range("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(range("0.0.0.0/0").contains(ip("203.0.113.1")));
        assert!(!range("0.0.0.0/0").contains(ip("::1")));
        assert!(
            range("10.1.2.3/16").contains(ip("10.1.200.1")),
            "host bits are ignored"
        );
        assert!(
            range("127.0.0.1").contains(ip("::ffff:127.0.0.1")),
            "mapped IPv6"
        );
        assert!(range("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!range("2001:db8::/32").contains(ip("2001:db9::5")));
        assert!(range("::/0").contains(ip("::1")));
        assert!(range("::1").contains(ip("::1")));
        assert_eq!(range("10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn bad_ip_ranges_are_refused() {
        for text in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "host",
            "10.0.0.0/+8",
            "1.2.3.4/8/8",
        ] {
            assert!(text.parse::<IpRange>().is_err(), "{text}");
        }
    }

    #[test]
    fn sanitize_removes_identity_headers_of_untrusted_peers_and_stripped_ones_always() {
        let sent = || {
            headers(&[
                ("x-forwarded-for", "10.9.9.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-prefix", "/x"),
                ("forwarded", "for=10.9.9.9"),
                ("x-real-ip", "10.9.9.9"),
                ("x-client-cert", "forged"),
                ("x-client-cert-dn", "CN=forged"),
                ("x-ssl-client-dn", "CN=forged"),
                ("x-sslx", "kept: no dash"),
                ("x-kept", "yes"),
            ])
        };
        let policy = ClientHeaderPolicy::new(
            vec![range("10.0.0.0/8")],
            vec!["X-Client-Cert*".into(), "x-ssl-*".into()],
        );
        let names = |map: &HeaderMap| {
            let mut names: Vec<String> = map.keys().map(|n| n.as_str().to_owned()).collect();
            names.sort();
            names
        };

        let mut untrusted = sent();
        assert!(!policy.sanitize(&mut untrusted, ip("192.0.2.1")));
        assert_eq!(names(&untrusted), ["x-kept", "x-sslx"]);

        let mut trusted = sent();
        assert!(policy.sanitize(&mut trusted, ip("10.1.1.1")));
        assert_eq!(
            names(&trusted),
            [
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-prefix",
                "x-forwarded-proto",
                "x-kept",
                "x-real-ip",
                "x-sslx"
            ]
        );

        let exact = ClientHeaderPolicy::new(Vec::new(), vec!["x-client-cert".into()]);
        let mut map = sent();
        exact.sanitize(&mut map, ip("192.0.2.1"));
        assert!(map.get("x-client-cert").is_none());
        assert_eq!(map["x-client-cert-dn"], "CN=forged");
    }

    #[test]
    fn upstream_uri_keeps_path_and_query() {
        let uri = upstream_uri(&Uri::from_static("/a/b?x=1&y=2"), "backend:8080", false);
        assert_eq!(
            uri.ok(),
            Some(Uri::from_static("http://backend:8080/a/b?x=1&y=2"))
        );
    }

    #[test]
    fn upstream_uri_replaces_authority_of_absolute_form() {
        let original = Uri::from_static("https://api.test:8443/v1?q");
        let uri = upstream_uri(&original, "10.0.0.1:443", true);
        assert_eq!(
            uri.ok(),
            Some(Uri::from_static("https://10.0.0.1:443/v1?q"))
        );
    }

    #[test]
    fn upstream_uri_defaults_to_root_path() {
        let uri = upstream_uri(&Uri::from_static("http://api.test"), "[::1]:80", false);
        assert_eq!(uri.ok(), Some(Uri::from_static("http://[::1]:80/")));
    }

    #[test]
    fn upstream_uri_rejects_bad_target() {
        assert!(upstream_uri(&Uri::from_static("/"), "bad target", false).is_err());
    }
}
