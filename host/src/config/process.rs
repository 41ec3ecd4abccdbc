//! The process-wide sections: `access_log`, the plugin `runtime` limits, the `admin` listener,
//! `pid_file`, `drain_timeout` and `workers`.

use super::*;

impl Checker<'_> {
    pub(super) fn access_log(&mut self, raw: &RawAccessLog) -> AccessLogTarget {
        let Some(target) = &raw.target else {
            return AccessLogTarget::Stdout;
        };
        let value = target.get_ref();
        if value == "stdout" {
            return AccessLogTarget::Stdout;
        }
        if value.is_empty() {
            self.problem(
                target.span().start,
                "access_log.target",
                "expected \"stdout\" or a file path",
            );
            return AccessLogTarget::Stdout;
        }
        let path = self.resolve_path(value);
        let dir = path.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            let message = format!("directory not found: {}", dir.display());
            self.problem(target.span().start, "access_log.target", message);
        }
        AccessLogTarget::File(path)
    }

    pub(super) fn runtime(&mut self, raw: Option<&RawRuntime>) -> RuntimeLimits {
        let defaults = RuntimeLimits::default();
        let Some(raw) = raw else {
            return defaults;
        };
        let max_instances = self.count(
            &raw.max_instances,
            "runtime.max_instances",
            u64::from(defaults.max_instances),
            (1, u64::from(runtime::engine::MAX_INSTANCES)),
        );
        let memory_budget = self.size(
            &raw.memory_budget,
            "runtime.memory_budget",
            defaults.memory_budget as u64,
            (MIN_MEMORY_BUDGET, MAX_MEMORY_BUDGET),
        );
        RuntimeLimits {
            max_instances: u32::try_from(max_instances).unwrap_or(u32::MAX),
            memory_budget: usize::try_from(memory_budget).unwrap_or(usize::MAX),
        }
    }

    pub(super) fn workers(&mut self, raw: &Field<i64>) -> Option<usize> {
        raw.as_ref()?;
        let workers = self.count(raw, "workers", 1, (1, MAX_WORKERS));
        Some(usize::try_from(workers).unwrap_or(1))
    }

    pub(super) fn pid_file(&mut self, raw: Option<&Spanned<String>>) -> Option<PathBuf> {
        let raw = raw?;
        if raw.get_ref().is_empty() {
            self.problem(raw.span().start, "pid_file", "expected a file path");
            return None;
        }
        let path = self.resolve_path(raw.get_ref());
        let dir = path.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            let message = format!("directory not found: {}", dir.display());
            self.problem(raw.span().start, "pid_file", message);
        }
        Some(path)
    }

    pub(super) fn admin(&mut self, raw: &RawAdmin, span: &Range<usize>) -> Option<AdminConfig> {
        let files = [
            (&raw.cert, "admin.cert"),
            (&raw.key, "admin.key"),
            (&raw.client_ca, "admin.client_ca"),
        ];
        let tls = if files.iter().any(|(value, _)| value.is_some()) {
            // TLS here always requires client certificates: all three or none.
            let [cert, key, client_ca] = files.map(|(value, field)| {
                self.required(value, field, span)
                    .map(|path| self.file(path, field))
            });
            Some(AdminTls {
                cert: cert?,
                key: key?,
                client_ca: client_ca?,
            })
        } else {
            None
        };
        let address = self.required(&raw.address, "admin.address", span)?;
        match address.get_ref().parse::<SocketAddr>() {
            Ok(address) => Some(AdminConfig { address, tls }),
            Err(_) => {
                let message = format!(
                    "invalid address `{}` (expected ip:port, e.g. 127.0.0.1:9901)",
                    address.get_ref()
                );
                self.problem(address.span().start, "admin.address", message);
                None
            }
        }
    }
}
