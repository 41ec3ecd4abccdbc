//! Which plugins run for what: the chain of a route (global, route and service plugins in
//! configured order) and the certificate-phase chain of a server name.
//!
//! Kong can only run global plugins in its certificate phase; Tollgate also runs the plugins of
//! every route (and its service) whose hosts could match the SNI, so mTLS policy can be per route.

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_phases::Phase;

use crate::config::PluginAttachment;
use crate::proxy::router::Router;
use crate::runtime::LoadedPlugin;

/// A request's ordered plugin chain.
pub type Chain = Arc<[Arc<LoadedPlugin>]>;

/// Plugin chains, computed once from the configuration.
#[derive(Debug)]
pub struct Chains {
    /// Every plugin with what it is attached to, in run order.
    plugins: Vec<(PluginAttachment, Arc<LoadedPlugin>)>,
    /// The chain of each route, by route name.
    by_route: HashMap<String, Chain>,
    /// Route name → its service name.
    route_service: HashMap<String, String>,
}

impl Chains {
    /// Resolves the chains of every route. `plugins` are in run order; `routes` pairs each route
    /// name with its service name.
    pub fn new(
        plugins: Vec<(PluginAttachment, Arc<LoadedPlugin>)>,
        routes: &[(String, String)],
    ) -> Chains {
        let by_route = routes
            .iter()
            .map(|(route, service)| {
                let chain: Chain = plugins
                    .iter()
                    .filter(|(attachment, _)| applies(attachment, route, service))
                    .map(|(_, plugin)| plugin.clone())
                    .collect();
                (route.clone(), chain)
            })
            .collect();
        Chains {
            plugins,
            by_route,
            route_service: routes.iter().cloned().collect(),
        }
    }

    /// Every configured plugin, in run order.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.plugins.iter().map(|(_, plugin)| plugin)
    }

    /// The chain of the named route.
    pub fn for_route(&self, route: &str) -> Chain {
        self.by_route
            .get(route)
            .cloned()
            .unwrap_or_else(|| Arc::from([]))
    }

    /// The plugins that run in the certificate phase for `sni`: global ones, and those of routes
    /// (or their services) whose hosts could match it.
    pub fn for_sni(&self, router: &Router, sni: Option<&str>) -> Vec<Arc<LoadedPlugin>> {
        let routes: Vec<(&str, &str)> = router
            .routes_for_sni(sni)
            .filter_map(|route| {
                let service = self.route_service.get(&route.name)?;
                Some((route.name.as_str(), service.as_str()))
            })
            .collect();
        self.plugins
            .iter()
            .filter(|(_, plugin)| plugin.handles(Phase::Certificate))
            .filter(|(attachment, _)| match attachment {
                PluginAttachment::Global => true,
                _ => routes
                    .iter()
                    .any(|(route, service)| applies(attachment, route, service)),
            })
            .map(|(_, plugin)| plugin.clone())
            .collect()
    }
}

fn applies(attachment: &PluginAttachment, route: &str, service: &str) -> bool {
    match attachment {
        PluginAttachment::Global => true,
        PluginAttachment::Route(name) => name == route,
        PluginAttachment::Service(name) => name == service,
    }
}
