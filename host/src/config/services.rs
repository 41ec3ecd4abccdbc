//! The `services` section: upstream targets, protocol, TLS to the upstream, timeouts and retries.

use super::*;

impl Checker<'_> {
    pub(super) fn services(&mut self, raw: &[Element<RawService>]) -> Vec<ServiceConfig> {
        let mut names = Names::new("service name");
        let mut out = Vec::new();
        for Element { index, span, raw } in raw {
            let at = format!("services[{index}]");
            let name = self.required(&raw.name, &format!("{at}.name"), span);
            let name = name.map(|name| {
                self.check_name(name, &format!("{at}.name"));
                names.add(self, name.get_ref(), name.span().start, &at);
                name.get_ref().clone()
            });
            let mut targets = Vec::new();
            if let Some(list) = self.required(&raw.targets, &format!("{at}.targets"), span) {
                if list.get_ref().is_empty() {
                    self.problem(
                        list.span().start,
                        format!("{at}.targets"),
                        "at least one target is required",
                    );
                }
                for (i, target) in list.get_ref().iter().enumerate() {
                    match parse_target(target.get_ref()) {
                        Ok(t) => targets.push(t),
                        Err(message) => {
                            self.problem(target.span().start, format!("{at}.targets[{i}]"), message)
                        }
                    }
                }
            }
            let protocol = raw
                .protocol
                .as_ref()
                .map_or(Protocol::Http, |p| *p.get_ref());
            if protocol == Protocol::Http {
                if let Some(v) = &raw.tls_verify {
                    self.problem(
                        v.span().start,
                        format!("{at}.tls_verify"),
                        "only valid for protocol = \"https\"",
                    );
                }
                if let Some(v) = &raw.ca {
                    self.problem(
                        v.span().start,
                        format!("{at}.ca"),
                        "only valid for protocol = \"https\"",
                    );
                }
            }
            let ca = raw.ca.as_ref().map(|ca| self.file(ca, &format!("{at}.ca")));
            let connect_timeout = self.duration(
                &raw.connect_timeout,
                &format!("{at}.connect_timeout"),
                DEFAULT_CONNECT_TIMEOUT,
                (MIN_TIMEOUT, MAX_TIMEOUT),
            );
            let read_timeout = self.duration(
                &raw.read_timeout,
                &format!("{at}.read_timeout"),
                DEFAULT_READ_TIMEOUT,
                (MIN_TIMEOUT, MAX_TIMEOUT),
            );
            let body_timeout = self.duration(
                &raw.body_timeout,
                &format!("{at}.body_timeout"),
                DEFAULT_BODY_TIMEOUT,
                (MIN_TIMEOUT, MAX_TIMEOUT),
            );
            let default_retries = u32::try_from(targets.len().saturating_sub(1))
                .unwrap_or(MAX_DEFAULT_RETRIES)
                .min(MAX_DEFAULT_RETRIES);
            let retries = match &raw.retries {
                None => default_retries,
                Some(r) => match u32::try_from(*r.get_ref()) {
                    Ok(n) if n <= MAX_RETRIES => n,
                    _ => {
                        let message = format!("must be between 0 and {MAX_RETRIES}");
                        self.problem(r.span().start, format!("{at}.retries"), message);
                        default_retries
                    }
                },
            };
            if let Some(name) = name {
                out.push(ServiceConfig {
                    name,
                    targets,
                    protocol,
                    connect_timeout,
                    read_timeout,
                    body_timeout,
                    retries,
                    tls_verify: raw.tls_verify.as_ref().is_none_or(|v| *v.get_ref()),
                    ca,
                });
            }
        }
        out
    }
}
