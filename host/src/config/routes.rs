//! The `routes` section: hosts, paths and methods, each leading to an existing service.

use super::*;

impl Checker<'_> {
    pub(super) fn routes(
        &mut self,
        raw: &[Element<RawRoute>],
        services: &[ServiceConfig],
    ) -> Vec<RouteConfig> {
        let mut names = Names::new("route name");
        let mut out = Vec::new();
        for Element { index, span, raw } in raw {
            let at = format!("routes[{index}]");
            let name = match &raw.name {
                Some(name) => {
                    self.check_name(name, &format!("{at}.name"));
                    names.add(self, name.get_ref(), name.span().start, &at);
                    name.get_ref().clone()
                }
                None => {
                    let name = format!("route-{index}");
                    names.add(self, &name, span.start, &at);
                    name
                }
            };
            let mut hosts = Vec::new();
            for (i, host) in raw.hosts.iter().flat_map(|h| h.get_ref()).enumerate() {
                if let Some(h) = self.host_pattern(host, &format!("{at}.hosts[{i}]")) {
                    hosts.push(h);
                }
            }
            let mut paths = Vec::new();
            for (i, path) in raw.paths.iter().flat_map(|p| p.get_ref()).enumerate() {
                if path.get_ref().starts_with('/') {
                    paths.push(path.get_ref().clone());
                } else {
                    let message = format!("path must start with \"/\": `{}`", path.get_ref());
                    self.problem(path.span().start, format!("{at}.paths[{i}]"), message);
                }
            }
            let mut methods = Vec::new();
            for (i, method) in raw.methods.iter().flat_map(|m| m.get_ref()).enumerate() {
                let m = method.get_ref();
                if !m.is_empty() && m.bytes().all(is_tchar) {
                    methods.push(m.to_ascii_uppercase());
                } else {
                    let message = format!("invalid HTTP method `{m}`");
                    self.problem(method.span().start, format!("{at}.methods[{i}]"), message);
                }
            }
            let service = self
                .required(&raw.service, &format!("{at}.service"), span)
                .map(|s| {
                    if !services.iter().any(|svc| svc.name == *s.get_ref()) {
                        self.unknown_reference(s, &format!("{at}.service"), "service");
                    }
                    s.get_ref().clone()
                });
            if let Some(service) = service {
                out.push(RouteConfig {
                    name,
                    hosts,
                    paths,
                    methods,
                    service,
                });
            }
        }
        out
    }
}
