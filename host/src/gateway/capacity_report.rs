//! What the configured limits imply, as `tollgate check` reports it: for each route, how many
//! instance slots and how much plugin memory one request may take, and so how many requests in
//! flight the runtime's slots and memory budget admit on that route alone; and which plugins
//! start with more memory than a pool slot keeps resident between instances.

use tollgate_phases::PhaseSet;

use super::Prepared;
use crate::runtime::RuntimeLimits;
use crate::runtime::engine::MEMORY_KEEP_RESIDENT;

/// One route's share of the runtime limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCapacity {
    /// The route's name.
    pub route: String,
    /// Instances one request holds (one per plugin with a request phase).
    pub instances: usize,
    /// The memory those instances may reach together (the sum of their caps).
    pub worst_memory: usize,
    /// Requests in flight the slots admit on this route alone (`None`: unlimited, no plugins).
    pub by_slots: Option<usize>,
    /// Requests in flight the memory budget admits at their worst (`None`: no plugins).
    pub by_memory: Option<usize>,
}

impl Prepared {
    /// Each route's share of `limits`, in config order.
    pub fn route_capacity(&self, limits: RuntimeLimits) -> Vec<RouteCapacity> {
        self.parts
            .router
            .routes()
            .iter()
            .map(|route| {
                let chain = self.parts.chains.for_route(&route.name);
                let plugins: Vec<_> = chain
                    .iter()
                    .filter(|plugin| plugin.phases().intersects(PhaseSet::REQUEST))
                    .collect();
                let instances = plugins.len();
                let worst_memory: usize = plugins.iter().map(|p| p.memory_limit()).sum();
                RouteCapacity {
                    route: route.name.clone(),
                    instances,
                    worst_memory,
                    by_slots: (instances > 0).then(|| limits.max_instances as usize / instances),
                    by_memory: (worst_memory > 0).then(|| limits.memory_budget / worst_memory),
                }
            })
            .collect()
    }
}

/// A plugin whose instances start with a linear memory larger than the part of a pool slot that
/// stays resident between instances: each instance pays `madvise` and page faults for the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OversizedStart {
    /// The plugin's name.
    pub plugin: String,
    /// The size its largest linear memory starts at.
    pub starting_memory: usize,
}

impl Prepared {
    /// The plugins whose memory starts above [`MEMORY_KEEP_RESIDENT`], measured on one fresh
    /// instance of each (a plugin that cannot be instantiated is skipped: loading named it).
    pub async fn oversized_starts(&self) -> Vec<OversizedStart> {
        let mut oversized = Vec::new();
        for plugin in self.parts.chains.plugins() {
            let instance = match plugin.instantiate(false).await {
                Ok(instance) => instance,
                Err(err) => {
                    tracing::debug!(plugin = plugin.name(), "no instance to measure: {err}");
                    continue;
                }
            };
            let starting_memory = instance.largest_memory();
            if starting_memory > MEMORY_KEEP_RESIDENT {
                oversized.push(OversizedStart {
                    plugin: plugin.name().to_owned(),
                    starting_memory,
                });
            }
        }
        oversized
    }
}

impl std::fmt::Display for OversizedStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin {}: its memory starts at {}, above the {} a pool slot keeps resident, so \
             every instance pays page faults for the rest (a Rust plugin linked with a 64 KiB \
             stack fits: see docs/writing-plugins.md)",
            self.plugin,
            human_bytes(self.starting_memory),
            human_bytes(MEMORY_KEEP_RESIDENT)
        )
    }
}

/// `bytes` in the largest binary unit that keeps it whole enough to read.
pub fn human_bytes(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl std::fmt::Display for RouteCapacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.by_slots, self.by_memory) {
            (Some(slots), Some(memory)) => write!(
                f,
                "route {}: {} plugin instance(s) per request, up to {} of plugin memory; \
                 at most {slots} requests in flight by instance slots, {memory} if every \
                 instance reached its memory cap",
                self.route,
                self.instances,
                human_bytes(self.worst_memory)
            ),
            _ => write!(
                f,
                "route {}: no request-phase plugins, no instance needed",
                self.route
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
