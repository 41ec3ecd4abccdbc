//! Header hygiene for a reverse proxy: what a request and a response lose and gain when
//! Tollgate forwards them (RFC 9110 §7.6.1, §7.6.2), and the URI sent upstream.
//!
//! ```
//! # use std::net::{IpAddr, Ipv4Addr};
//! # use http::{HeaderMap, HeaderValue, Uri};
//! # use tollgate::proxy::forwarding::{add_forwarded, strip_hop_by_hop, upstream_uri};
//! let mut headers = HeaderMap::new();
//! headers.insert("connection", HeaderValue::from_static("close, x-secret"));
//! headers.insert("x-secret", HeaderValue::from_static("1"));
//! strip_hop_by_hop(&mut headers);
//! add_forwarded(&mut headers, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), "https", Some("api.test"));
//! assert!(headers.get("x-secret").is_none());
//! assert_eq!(headers["x-forwarded-for"], "203.0.113.7");
//!
//! let uri = upstream_uri(&Uri::from_static("/v1/users?page=2"), "10.0.0.5:8080", false).unwrap();
//! assert_eq!(uri, "http://10.0.0.5:8080/v1/users?page=2");
//! ```

use std::net::IpAddr;

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

/// Adds what the upstream needs to know about the original request: appends `client_ip` to
/// `X-Forwarded-For` (joining any values the client sent into one header, as nginx's
/// `$proxy_add_x_forwarded_for` does), and sets `X-Forwarded-Proto` to `proto` and
/// `X-Forwarded-Host` to `host`, replacing what the client sent (a client must not choose
/// them); with `host` `None` any client-sent `X-Forwarded-Host` is removed.
///
/// IPv4-mapped IPv6 addresses (`::ffff:203.0.113.7`, seen on dual-stack listeners) are written
/// in IPv4 form. Values that are not valid header text are skipped rather than forwarded.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: IpAddr, proto: &str, host: Option<&str>) {
    let client = client_ip.to_canonical().to_string();
    let mut chain = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            chain.extend_from_slice(value);
            chain.extend_from_slice(b", ");
        }
    }
    chain.extend_from_slice(client.as_bytes());
    let chain = HeaderValue::from_bytes(&chain)
        // Only reachable if a client value was invalid, which HeaderMap already rules out.
        .or_else(|_| HeaderValue::from_str(&client));
    if let Ok(chain) = chain {
        headers.insert(X_FORWARDED_FOR, chain);
    }

    match HeaderValue::from_str(proto) {
        Ok(proto) => headers.insert(X_FORWARDED_PROTO, proto),
        Err(_) => headers.remove(X_FORWARDED_PROTO),
    };
    match host.map(HeaderValue::from_str) {
        Some(Ok(host)) => headers.insert(X_FORWARDED_HOST, host),
        _ => headers.remove(X_FORWARDED_HOST),
    };
}

/// Sets `X-Forwarded-Port` to the port the client connected to, replacing any client value.
pub fn set_forwarded_port(headers: &mut HeaderMap, port: u16) {
    headers.insert(X_FORWARDED_PORT, HeaderValue::from(port));
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

    #[test]
    fn forwarded_for_is_created() {
        let mut map = HeaderMap::new();
        add_forwarded(
            &mut map,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            "https",
            Some("api.test"),
        );
        assert_eq!(map[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(map[&X_FORWARDED_PROTO], "https");
        assert_eq!(map[&X_FORWARDED_HOST], "api.test");
    }

    #[test]
    fn forwarded_for_appends_to_existing_chain() {
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.1, 198.51.100.2"),
            ("x-forwarded-for", "198.51.100.3 "),
        ]);
        add_forwarded(&mut map, IpAddr::V6(Ipv6Addr::LOCALHOST), "http", None);
        let all: Vec<_> = map.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["198.51.100.1, 198.51.100.2, 198.51.100.3, ::1"]);
    }

    #[test]
    fn forwarded_proto_and_host_replace_client_values() {
        let mut map = headers(&[
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil.test"),
        ]);
        add_forwarded(&mut map, IpAddr::V4(Ipv4Addr::LOCALHOST), "http", None);
        assert_eq!(map[&X_FORWARDED_PROTO], "http");
        assert!(map.get(&X_FORWARDED_HOST).is_none());

        add_forwarded(
            &mut map,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "https",
            Some("good.test"),
        );
        assert_eq!(map.get_all(&X_FORWARDED_HOST).iter().count(), 1);
        assert_eq!(map[&X_FORWARDED_HOST], "good.test");
    }

    #[test]
    fn forwarded_for_writes_mapped_ipv6_as_ipv4() {
        let mut map = HeaderMap::new();
        let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped());
        add_forwarded(&mut map, mapped, "http", None);
        assert_eq!(map[&X_FORWARDED_FOR], "203.0.113.9");
    }

    #[test]
    fn forwarded_port_is_set() {
        let mut map = headers(&[("x-forwarded-port", "1")]);
        set_forwarded_port(&mut map, 8443);
        assert_eq!(map[&X_FORWARDED_PORT], "8443");
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
