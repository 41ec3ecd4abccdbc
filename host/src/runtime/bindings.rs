//! The one `bindgen!` of the host, over `wit/plugin.wit`. The rest of the crate uses the
//! re-exports below, never the generated paths.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    exports: { default: async },
});

// The world's generated `Plugin` and `PluginPre`, renamed so `Plugin` means only the SDK trait.
pub use self::tollgate::plugin::types::{Error as HostError, LogLevel, Phase as WitPhase};
pub use self::tollgate::plugin::{
    balancer, client_tls, connection, context, log as plugin_log, request, response, types,
};
pub use self::{Plugin as PluginWorld, PluginPre as PluginWorldPre};

/// The WIT package's name and version, as imports and exports spell it.
pub const WIT_PACKAGE: &str = "tollgate:plugin";
/// The version of [`WIT_PACKAGE`] this host implements.
pub const WIT_VERSION: &str = "0.1.0";
/// The interface every plugin must export.
pub const HANDLER_EXPORT: &str = "tollgate:plugin/handler@0.1.0";

impl From<WitPhase> for tollgate_phases::Phase {
    fn from(phase: WitPhase) -> Self {
        use tollgate_phases::Phase;
        match phase {
            WitPhase::Certificate => Phase::Certificate,
            WitPhase::Rewrite => Phase::Rewrite,
            WitPhase::Access => Phase::Access,
            WitPhase::Balancer => Phase::Balancer,
            WitPhase::HeaderFilter => Phase::HeaderFilter,
            WitPhase::BodyFilter => Phase::BodyFilter,
            WitPhase::Log => Phase::Log,
        }
    }
}
