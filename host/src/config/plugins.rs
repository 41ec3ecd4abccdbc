//! The `plugins` section: files, configurations, what each plugin is attached to, its order
//! and its limits.

use super::*;

impl Checker<'_> {
    pub(super) fn plugins(
        &mut self,
        raw: &[Element<RawPlugin>],
        routes: &[RouteConfig],
        services: &[ServiceConfig],
    ) -> Vec<PluginConfig> {
        let mut names = Names::new("plugin name");
        let mut out = Vec::new();
        for Element { index, span, raw } in raw {
            let at = format!("plugins[{index}]");
            let path = self
                .required(&raw.path, &format!("{at}.path"), span)
                .map(|p| (p, self.file(p, &format!("{at}.path"))));
            let name = match (&raw.name, &path) {
                (Some(name), _) => {
                    self.check_name(name, &format!("{at}.name"));
                    names.add(self, name.get_ref(), name.span().start, &at);
                    Some(name.get_ref().clone())
                }
                (None, Some((p, resolved))) => {
                    let stem = resolved
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if names.contains(&stem) {
                        let message = format!(
                            "plugin name `{stem}` (from the file name) is already used by {}; \
                             give this instance a distinct `name`",
                            names.first(&stem).unwrap_or_default()
                        );
                        self.problem(p.span().start, format!("{at}.name"), message);
                    } else {
                        names.add(self, &stem, p.span().start, &at);
                    }
                    Some(stem)
                }
                (None, None) => None,
            };
            let config = match &raw.config {
                None => Some(serde_json::Value::Object(serde_json::Map::new())),
                Some(table) => match toml_to_json(toml::Value::Table(table.get_ref().clone())) {
                    Ok(json) => Some(json),
                    Err(message) => {
                        self.problem(table.span().start, format!("{at}.config"), message);
                        None
                    }
                },
            };
            let attached_to = match (&raw.route, &raw.service) {
                (Some(_), Some(service)) => {
                    self.problem(
                        service.span().start,
                        format!("{at}.service"),
                        "a plugin is scoped to a route or a service, not both",
                    );
                    PluginAttachment::Global
                }
                (Some(route), None) => {
                    if !routes.iter().any(|r| r.name == *route.get_ref()) {
                        self.unknown_reference(route, &format!("{at}.route"), "route");
                    }
                    PluginAttachment::Route(route.get_ref().clone())
                }
                (None, Some(service)) => {
                    if !services.iter().any(|s| s.name == *service.get_ref()) {
                        self.unknown_reference(service, &format!("{at}.service"), "service");
                    }
                    PluginAttachment::Service(service.get_ref().clone())
                }
                (None, None) => PluginAttachment::Global,
            };
            let memory_limit = self.memory(&raw.memory_limit, &format!("{at}.memory_limit"));
            let time_limit = self.duration(
                &raw.time_limit,
                &format!("{at}.time_limit"),
                DEFAULT_TIME_LIMIT,
                (MIN_TIME_LIMIT, MAX_TIME_LIMIT),
            );
            if let (Some(name), Some((_, path)), Some(config)) = (name, path, config) {
                self.plugin_indexes.insert(name.clone(), *index);
                out.push(PluginConfig {
                    name,
                    path,
                    config,
                    attached_to,
                    order: raw.order.as_ref().map_or(0, |o| *o.get_ref()),
                    fail_open: raw.fail_open.as_ref().is_some_and(|f| *f.get_ref()),
                    memory_limit,
                    time_limit,
                });
            }
        }
        // `sort_by_key` is stable: equal orders keep file order.
        out.sort_by_key(|p| p.order);
        out
    }
}
