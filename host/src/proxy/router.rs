//! Route matching: which configured route (and so which service) a request goes to.
//!
//! Matching follows Kong's traditional router. A route matches when every criterion it
//! configures matches (hosts: any of them; paths: any prefix; methods: any of them); a route
//! that configures none matches everything. Paths are compared case-sensitively, as in Kong, and
//! the gateway hands the router the normalized path ([`super::path::normalize`]), so `//v1` or
//! `/%761` cannot slip past a `/v1` route. Among matching routes the winner is decided by, in
//! order:
//!
//! 1. more configured criteria (hosts, paths, methods) first;
//! 2. an exact host match before a wildcard host match;
//! 3. the longest matching path prefix;
//! 4. configuration order.
//!
//! ```
//! # use tollgate::proxy::router::{Route, Router};
//! let router = Router::new(vec![
//!     Route { name: "catch-all".into(), hosts: vec![], paths: vec![], methods: vec![], service: 0 },
//!     Route { name: "api".into(), hosts: vec!["*.example.com".into()], paths: vec!["/v1".into()],
//!             methods: vec![], service: 1 },
//! ]);
//! let route = router.route(Some("API.example.com"), "/v1/users", "GET");
//! assert_eq!(route.map(|r| r.name.as_str()), Some("api"));
//! ```

/// One configured route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The route's name, for logs and plugin scoping.
    pub name: String,
    /// Host names this route serves: exact (`api.example.com`) or wildcard (`*.example.com`).
    /// Compared case-insensitively. Empty: any host.
    pub hosts: Vec<String>,
    /// Path prefixes (plain, case-sensitive byte prefixes, as in Kong: `/v1` also matches
    /// `/v1beta`, not `/V1`). Empty: any path.
    pub paths: Vec<String>,
    /// Upper-case method names. Empty: any method.
    pub methods: Vec<String>,
    /// Index of the service this route forwards to.
    pub service: usize,
}

/// How a route's host list matched a request host; the order is the precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostMatch {
    /// The route has no hosts.
    Any,
    /// A `*.suffix` pattern matched.
    Wildcard,
    /// An exact host name matched.
    Exact,
}

/// Finds the route for a request; built once from the configuration.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds a router. Hosts are lower-cased here so matching does not allocate.
    pub fn new(mut routes: Vec<Route>) -> Router {
        for route in &mut routes {
            for host in &mut route.hosts {
                *host = normalize_host(host).to_ascii_lowercase();
            }
        }
        Router { routes }
    }

    /// The routes, in configuration order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The best matching route for a request, or `None` (the caller answers 404).
    ///
    /// `host` is the request's host without the port (see [`strip_port`]); `None` when the
    /// request carried none, in which case only routes without hosts can match.
    pub fn route(&self, host: Option<&str>, path: &str, method: &str) -> Option<&Route> {
        let host = host.map(normalize_host);
        let mut best: Option<(RouteRank, &Route)> = None;
        for (index, route) in self.routes.iter().enumerate() {
            let Some(rank) = rank(route, index, host, path, method) else {
                continue;
            };
            if best.as_ref().is_none_or(|(best_rank, _)| rank > *best_rank) {
                best = Some((rank, route));
            }
        }
        best.map(|(_, route)| route)
    }

    /// Routes that could serve a connection whose ClientHello carried this server name: those
    /// whose hosts match it, and those without hosts. Used to pick the route-scoped plugins for
    /// the TLS certificate phase.
    ///
    /// Without SNI only routes without hosts are returned. SNI and `Host` may differ on the same
    /// connection (nothing ties them), so a plugin that requires a client certificate must also
    /// check for it in the access phase.
    pub fn routes_for_sni<'a>(&'a self, sni: Option<&'a str>) -> impl Iterator<Item = &'a Route> {
        let sni = sni.map(normalize_host);
        self.routes.iter().filter(move |route| {
            route.hosts.is_empty()
                || sni.is_some_and(|sni| route.hosts.iter().any(|p| host_matches(p, sni)))
        })
    }
}

/// The precedence key of a matching route: larger wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RouteRank {
    criteria: u8,
    host: HostMatch,
    path_len: usize,
    /// Earlier routes win ties.
    order: std::cmp::Reverse<usize>,
}

/// `None` when the route does not match; otherwise its precedence.
fn rank(
    route: &Route,
    index: usize,
    host: Option<&str>,
    path: &str,
    method: &str,
) -> Option<RouteRank> {
    let host_match = if route.hosts.is_empty() {
        HostMatch::Any
    } else {
        let host = host?;
        route
            .hosts
            .iter()
            .filter_map(|pattern| match_host(pattern, host))
            .max()?
    };
    let path_len = if route.paths.is_empty() {
        0
    } else {
        route
            .paths
            .iter()
            .filter(|prefix| path.starts_with(prefix.as_str()))
            .map(String::len)
            .max()?
    };
    if !route.methods.is_empty() && !route.methods.iter().any(|m| m == method) {
        return None;
    }
    let criteria = u8::from(!route.hosts.is_empty())
        + u8::from(!route.paths.is_empty())
        + u8::from(!route.methods.is_empty());
    Some(RouteRank {
        criteria,
        host: host_match,
        path_len,
        order: std::cmp::Reverse(index),
    })
}

fn match_host(pattern: &str, host: &str) -> Option<HostMatch> {
    let pattern = normalize_host(pattern);
    match pattern.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') => {
            let host_len = host.len();
            // At least one character must stand in for the `*`.
            (host_len > suffix.len()
                && host.is_char_boundary(host_len - suffix.len())
                && host[host_len - suffix.len()..].eq_ignore_ascii_case(suffix))
            .then_some(HostMatch::Wildcard)
        }
        _ => pattern
            .eq_ignore_ascii_case(host)
            .then_some(HostMatch::Exact),
    }
}

/// Whether `host` matches `pattern`: an exact name, or `*.suffix` matching any name that ends
/// in `.suffix` with at least one character before it (`*.example.com` matches
/// `a.example.com` and `a.b.example.com`, not `example.com`). Case-insensitive; a trailing
/// dot (fully qualified form) is ignored on both sides.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match_host(pattern, normalize_host(host)).is_some()
}

/// The host part of a `Host` header or URI authority: `example.com:8443` → `example.com`,
/// `[::1]:8080` → `::1`.
pub fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: everything up to the closing bracket.
        return rest.split_once(']').map_or(authority, |(ip, _)| ip);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

fn normalize_host(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str], paths: &[&str], methods: &[&str]) -> Route {
        Route {
            name: name.to_owned(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            service: 0,
        }
    }

    fn pick<'a>(
        router: &'a Router,
        host: Option<&str>,
        path: &str,
        method: &str,
    ) -> Option<&'a str> {
        router.route(host, path, method).map(|r| r.name.as_str())
    }

    #[test]
    fn route_without_criteria_matches_everything() {
        let router = Router::new(vec![route("all", &[], &[], &[])]);
        assert_eq!(pick(&router, None, "/", "GET"), Some("all"));
        assert_eq!(pick(&router, Some("x.test"), "/a/b", "DELETE"), Some("all"));
    }

    #[test]
    fn no_matching_route_gives_none() {
        let router = Router::new(vec![route("api", &["api.test"], &["/v1"], &["GET"])]);
        assert_eq!(pick(&router, Some("other.test"), "/v1", "GET"), None);
        assert_eq!(pick(&router, Some("api.test"), "/v2", "GET"), None);
        assert_eq!(pick(&router, Some("api.test"), "/v1", "POST"), None);
        assert_eq!(pick(&router, None, "/v1", "GET"), None);
        assert_eq!(pick(&router, Some("api.test"), "/v1/x", "GET"), Some("api"));
    }

    #[test]
    fn host_match_is_case_insensitive_and_ignores_trailing_dot() {
        let router = Router::new(vec![route("api", &["API.Example.com"], &[], &[])]);
        assert_eq!(
            pick(&router, Some("api.example.COM"), "/", "GET"),
            Some("api")
        );
        assert_eq!(
            pick(&router, Some("api.example.com."), "/", "GET"),
            Some("api")
        );
    }

    #[test]
    fn more_criteria_win() {
        let router = Router::new(vec![
            route("host-only", &["api.test"], &[], &[]),
            route("host-path", &["*.test"], &["/v1"], &[]),
            route("host-path-method", &["*.test"], &["/"], &["GET"]),
        ]);
        assert_eq!(
            pick(&router, Some("api.test"), "/v1", "GET"),
            Some("host-path-method")
        );
        assert_eq!(
            pick(&router, Some("api.test"), "/v1", "POST"),
            Some("host-path")
        );
        assert_eq!(
            pick(&router, Some("api.test"), "/v2", "POST"),
            Some("host-only")
        );
    }

    #[test]
    fn exact_host_beats_wildcard() {
        let router = Router::new(vec![
            route("wild", &["*.example.com"], &["/"], &[]),
            route("exact", &["api.example.com"], &["/"], &[]),
        ]);
        assert_eq!(
            pick(&router, Some("api.example.com"), "/", "GET"),
            Some("exact")
        );
        assert_eq!(
            pick(&router, Some("www.example.com"), "/", "GET"),
            Some("wild")
        );
    }

    #[test]
    fn exact_host_beats_wildcard_within_one_route_list() {
        // The same route lists both; an exact hit must rank as exact.
        let router = Router::new(vec![
            route("wild", &["*.example.com"], &["/"], &[]),
            route("both", &["*.example.com", "api.example.com"], &["/"], &[]),
        ]);
        assert_eq!(
            pick(&router, Some("api.example.com"), "/", "GET"),
            Some("both")
        );
    }

    #[test]
    fn host_precedence_before_path_length() {
        let router = Router::new(vec![
            route("wild-long", &["*.example.com"], &["/api/v1"], &[]),
            route("exact-short", &["api.example.com"], &["/"], &[]),
        ]);
        assert_eq!(
            pick(&router, Some("api.example.com"), "/api/v1/x", "GET"),
            Some("exact-short")
        );
    }

    #[test]
    fn longest_path_prefix_wins() {
        let router = Router::new(vec![
            route("root", &[], &["/"], &[]),
            route("v1", &[], &["/v1"], &[]),
            route("v1-users", &[], &["/v2", "/v1/users"], &[]),
        ]);
        assert_eq!(pick(&router, None, "/v1/users/7", "GET"), Some("v1-users"));
        assert_eq!(pick(&router, None, "/v1/orders", "GET"), Some("v1"));
        assert_eq!(pick(&router, None, "/other", "GET"), Some("root"));
        // Plain prefixes, as in Kong.
        assert_eq!(pick(&router, None, "/v1beta", "GET"), Some("v1"));
    }

    #[test]
    fn config_order_breaks_ties() {
        let router = Router::new(vec![
            route("first", &[], &["/a"], &[]),
            route("second", &[], &["/a"], &[]),
        ]);
        assert_eq!(pick(&router, None, "/a", "GET"), Some("first"));
    }

    #[test]
    fn method_must_match_exactly() {
        let router = Router::new(vec![route("get", &[], &[], &["GET", "HEAD"])]);
        assert_eq!(pick(&router, None, "/", "HEAD"), Some("get"));
        assert_eq!(pick(&router, None, "/", "POST"), None);
    }

    #[test]
    fn wildcard_host_rules() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(host_matches("*.Example.COM", "A.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", ".example.com"));
        assert!(!host_matches("*.example.com", "aexample.com"));
        assert!(host_matches("example.com", "EXAMPLE.com."));
        assert!(!host_matches("example.com", "a.example.com"));
        // A `*` anywhere else is just a character.
        assert!(!host_matches("a*.example.com", "ab.example.com"));
        assert!(!host_matches("*.example.com", "é.example.co"));
    }

    #[test]
    fn routes_for_sni_includes_hostless_routes() {
        let router = Router::new(vec![
            route("exact", &["api.example.com"], &[], &[]),
            route("wild", &["*.example.com"], &[], &[]),
            route("other", &["other.test"], &[], &[]),
            route("any", &[], &["/"], &[]),
        ]);
        let names = |sni| {
            router
                .routes_for_sni(sni)
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Some("API.example.com")), ["exact", "wild", "any"]);
        assert_eq!(names(Some("www.example.com")), ["wild", "any"]);
        assert_eq!(names(Some("nothing.test")), ["any"]);
        assert_eq!(names(None), ["any"]);
    }

    #[test]
    fn strip_port_handles_names_and_ip_literals() {
        assert_eq!(strip_port("example.com:8443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("::1"), "::1");
    }
}
