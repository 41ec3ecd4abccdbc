//! The process-wide sections: `access_log` and the plugin `runtime` limits.

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
}
