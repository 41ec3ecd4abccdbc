//! The host's bindings over `wit/plugin.wit`. The rest of the crate uses the re-exports below,
//! never the generated paths.
//!
//! There is one API, the current one. Small `bindgen!`s of the older versions (in [`v0_1`] and
//! [`v0_2`]) exist only so plugins built against `tollgate:plugin@0.1.0` and `@0.2.0` keep
//! loading: a component names the versioned interfaces it imports and exports, and wasmtime links
//! `@0.1.0`, `@0.2.0` and `@0.3.0` as different names (a 0.x minor bump is a breaking one in
//! semver), so the old names must be in the linker and the old handler export must be found.
//! Their imports are implemented by forwarding to the current ones ([`super::host_api`] has the
//! only implementation), and their `types` interface *is* the current one, so errors, phases and
//! log levels have one Rust type each.

use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{AsContextMut, Engine};

use super::store::PluginStore;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    exports: { default: async },
});

// The world's generated `Plugin` and `PluginPre` stay private: `Plugin` means only the SDK trait,
// and callers see [`PluginWorld`], which also holds plugins of the old version.
pub use self::tollgate::plugin::types::{Error as HostError, LogLevel, Phase as WitPhase};
pub use self::tollgate::plugin::{
    balancer, client_tls, connection, context, log as plugin_log, request, response, types,
};

/// The WIT package's name and version, as imports and exports spell it.
pub const WIT_PACKAGE: &str = "tollgate:plugin";
/// The version of [`WIT_PACKAGE`] this host implements.
pub const WIT_VERSION: &str = "0.3.0";
/// Older versions whose plugins still load (their API is a subset of this one), newest first.
pub const OLDER_WIT_VERSIONS: &[&str] = &["0.2.0", "0.1.0"];
/// The interface every plugin must export.
pub const HANDLER_EXPORT: &str = "tollgate:plugin/handler@0.3.0";
/// The handler export of a plugin built against 0.2.0.
const HANDLER_EXPORT_0_2: &str = "tollgate:plugin/handler@0.2.0";

/// `tollgate:plugin@0.1.0`, from the copy kept in `wit/compat/`.
mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/compat/plugin-0.1.0.wit",
        world: "plugin",
        exports: { default: async },
        with: { "tollgate:plugin/types@0.1.0": crate::runtime::bindings::types },
    });
}

/// `tollgate:plugin@0.2.0`, from the copy kept in `wit/compat/`.
mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/compat/plugin-0.2.0.wit",
        world: "plugin",
        exports: { default: async },
        with: { "tollgate:plugin/types@0.2.0": crate::runtime::bindings::types },
    });
}

/// Adds every version's imports (and WASI's are added by the caller) to `linker`.
pub fn add_to_linker(linker: &mut Linker<PluginStore>) -> wasmtime::Result<()> {
    fn host(store: &mut PluginStore) -> &mut PluginStore {
        store
    }
    Plugin::add_to_linker::<_, HasSelf<_>>(linker, host)?;
    // Not the old worlds' `add_to_linker`: their `types` is the current interface, already
    // added under its current name.
    linker.instance("tollgate:plugin/types@0.2.0")?;
    linker.instance("tollgate:plugin/types@0.1.0")?;
    macro_rules! add_interfaces {
        ($old:path) => {{
            use $old as old;
            old::client_tls::add_to_linker::<_, HasSelf<_>>(linker, host)?;
            old::connection::add_to_linker::<_, HasSelf<_>>(linker, host)?;
            old::request::add_to_linker::<_, HasSelf<_>>(linker, host)?;
            old::response::add_to_linker::<_, HasSelf<_>>(linker, host)?;
            old::balancer::add_to_linker::<_, HasSelf<_>>(linker, host)?;
            old::context::add_to_linker::<_, HasSelf<_>>(linker, host)?;
            old::log::add_to_linker::<_, HasSelf<_>>(linker, host)?;
        }};
    }
    add_interfaces!(v0_2::tollgate::plugin);
    add_interfaces!(v0_1::tollgate::plugin);
    Ok(())
}

/// A linked plugin of either version, ready to instantiate.
pub enum PluginWorldPre<T: 'static> {
    /// Built against this version.
    Current(PluginPre<T>),
    /// Built against 0.2.0.
    V0_2(v0_2::PluginPre<T>),
    /// Built against 0.1.0.
    V0_1(v0_1::PluginPre<T>),
}

impl<T: Send + 'static> PluginWorldPre<T> {
    /// Finds the handler export of the version the component was built against.
    pub fn new(pre: InstancePre<T>) -> wasmtime::Result<Self> {
        let engine = pre.engine().clone();
        let exports = |name| {
            pre.component()
                .component_type()
                .get_export(&engine, name)
                .is_some()
        };
        if exports(HANDLER_EXPORT) {
            Ok(Self::Current(PluginPre::new(pre)?))
        } else if exports(HANDLER_EXPORT_0_2) {
            Ok(Self::V0_2(v0_2::PluginPre::new(pre)?))
        } else {
            Ok(Self::V0_1(v0_1::PluginPre::new(pre)?))
        }
    }

    /// The engine the plugin was compiled for.
    pub fn engine(&self) -> &Engine {
        match self {
            Self::Current(pre) => pre.engine(),
            Self::V0_2(pre) => pre.engine(),
            Self::V0_1(pre) => pre.engine(),
        }
    }

    /// The linked component, to instantiate without the typed bindings (snapshots read the raw
    /// instance's state).
    pub fn instance_pre(&self) -> &InstancePre<T> {
        match self {
            Self::Current(pre) => pre.instance_pre(),
            Self::V0_2(pre) => pre.instance_pre(),
            Self::V0_1(pre) => pre.instance_pre(),
        }
    }

    /// The typed bindings of `instance`, an instance of [`Self::instance_pre`].
    pub fn bindings(
        &self,
        store: impl AsContextMut<Data = T>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<PluginWorld> {
        Ok(match self {
            Self::Current(_) => PluginWorld::Current(Plugin::new(store, instance)?),
            Self::V0_2(_) => PluginWorld::V0_2(v0_2::Plugin::new(store, instance)?),
            Self::V0_1(_) => PluginWorld::V0_1(v0_1::Plugin::new(store, instance)?),
        })
    }

    /// Instantiates the plugin in `store`.
    pub async fn instantiate_async(
        &self,
        store: impl AsContextMut<Data = T>,
    ) -> wasmtime::Result<PluginWorld> {
        Ok(match self {
            Self::Current(pre) => PluginWorld::Current(pre.instantiate_async(store).await?),
            Self::V0_2(pre) => PluginWorld::V0_2(pre.instantiate_async(store).await?),
            Self::V0_1(pre) => PluginWorld::V0_1(pre.instantiate_async(store).await?),
        })
    }
}

/// A live plugin instance of either version.
pub enum PluginWorld {
    /// Built against this version.
    Current(Plugin),
    /// Built against 0.2.0.
    V0_2(v0_2::Plugin),
    /// Built against 0.1.0.
    V0_1(v0_1::Plugin),
}

impl PluginWorld {
    /// The plugin's `handler` export.
    pub fn tollgate_plugin_handler(&self) -> Handler<'_> {
        match self {
            Self::Current(world) => Handler::Current(world.tollgate_plugin_handler()),
            Self::V0_2(world) => Handler::V0_2(world.tollgate_plugin_handler()),
            Self::V0_1(world) => Handler::V0_1(world.tollgate_plugin_handler()),
        }
    }
}

/// The `handler` export of either version: the same functions with the same types.
pub enum Handler<'a> {
    /// Built against this version.
    Current(&'a exports::tollgate::plugin::handler::Guest),
    /// Built against 0.2.0.
    V0_2(&'a v0_2::exports::tollgate::plugin::handler::Guest),
    /// Built against 0.1.0.
    V0_1(&'a v0_1::exports::tollgate::plugin::handler::Guest),
}

/// Calls the same method on whichever version's handler it is.
macro_rules! on_either {
    ($handler:expr, $guest:ident => $call:expr) => {
        match $handler {
            Handler::Current($guest) => $call,
            Handler::V0_2($guest) => $call,
            Handler::V0_1($guest) => $call,
        }
    };
}

type Outcome = wasmtime::Result<Result<(), String>>;

impl Handler<'_> {
    pub async fn call_configure<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        config: &str,
    ) -> Outcome {
        on_either!(self, guest => guest.call_configure(store, config).await)
    }

    pub async fn call_phases<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
    ) -> wasmtime::Result<Vec<WitPhase>> {
        on_either!(self, guest => guest.call_phases(store).await)
    }

    pub async fn call_on_certificate<S: AsContextMut<Data: Send>>(&self, store: S) -> Outcome {
        on_either!(self, guest => guest.call_on_certificate(store).await)
    }

    pub async fn call_on_rewrite<S: AsContextMut<Data: Send>>(&self, store: S) -> Outcome {
        on_either!(self, guest => guest.call_on_rewrite(store).await)
    }

    pub async fn call_on_access<S: AsContextMut<Data: Send>>(&self, store: S) -> Outcome {
        on_either!(self, guest => guest.call_on_access(store).await)
    }

    pub async fn call_on_balancer<S: AsContextMut<Data: Send>>(&self, store: S) -> Outcome {
        on_either!(self, guest => guest.call_on_balancer(store).await)
    }

    pub async fn call_on_header_filter<S: AsContextMut<Data: Send>>(&self, store: S) -> Outcome {
        on_either!(self, guest => guest.call_on_header_filter(store).await)
    }

    pub async fn call_on_body_filter<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Outcome {
        on_either!(self, guest => guest.call_on_body_filter(store, chunk, end_of_stream).await)
    }

    pub async fn call_on_log<S: AsContextMut<Data: Send>>(&self, store: S) -> Outcome {
        on_either!(self, guest => guest.call_on_log(store).await)
    }
}

/// An old version's imports: each is the current function of the same name (each version only
/// added functions), so an old plugin gets exactly today's phase checks and rules.
macro_rules! forward {
    // The interfaces in `$interfaces`, for each version listed.
    ([$($version:ident),*] $interfaces:tt) => {
        $(forward!(@version $version $interfaces);)*
    };
    (@version $version:ident { $($old:ident => $current:ident { $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)* })* }) => {
        $(
            impl $version::tollgate::plugin::$old::Host for PluginStore {
                $(
                    fn $name(&mut self $(, $arg: $ty)*) -> Result<$ret, HostError> {
                        <Self as $current::Host>::$name(self $(, $arg)*)
                    }
                )*
            }
        )*
    };
}

// 0.1.0's client-tls; 0.2.0's is below, by hand, for its certificate record.
forward! {
    [v0_1] {
        client_tls => client_tls {
            fn request_client_certificate(ca_certs: Option<String>) -> ();
            fn disable_session_reuse() -> ();
            fn get_full_client_certificate_chain() -> Option<String>;
            fn set_client_verify(value: String) -> ();
            fn verify_client_chain(ca_certs: String) -> String;
        }
    }
}

forward! {
    [v0_2, v0_1] {
        connection => connection {
            fn sni() -> Option<String>;
            fn is_tls() -> bool;
            fn client_address() -> String;
            fn tls_version() -> String;
            fn cipher() -> String;
            fn client_verify() -> String;
        }
        request => request {
            fn method() -> String;
            fn path() -> String;
            fn query() -> Option<String>;
            fn header(name: String) -> Option<String>;
            fn headers() -> Vec<(String, String)>;
            fn set_header(name: String, value: String) -> ();
            fn remove_header(name: String) -> ();
        }
        response => response {
            fn exit(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> ();
            fn status() -> u16;
            fn header(name: String) -> Option<String>;
            fn headers() -> Vec<(String, String)>;
            fn set_header(name: String, value: String) -> ();
            fn remove_header(name: String) -> ();
            fn set_body_chunk(chunk: Vec<u8>) -> ();
        }
        balancer => balancer {
            fn targets() -> Vec<String>;
            fn set_target(target: String) -> ();
            fn attempt() -> u32;
        }
        context => context {
            fn get(key: String) -> Option<String>;
            fn set(key: String, value: String) -> ();
        }
        log => plugin_log {
            fn log(level: LogLevel, message: String) -> ();
        }
    }
}

/// 0.2.0's client-tls: the current functions; 0.3.0 only added two. Its `client-certificate`
/// record is the current one under another name, so it is moved across field by field.
impl v0_2::tollgate::plugin::client_tls::Host for PluginStore {
    fn request_client_certificate(&mut self, ca_certs: Option<String>) -> Result<(), HostError> {
        client_tls::Host::request_client_certificate(self, ca_certs)
    }

    fn disable_session_reuse(&mut self) -> Result<(), HostError> {
        client_tls::Host::disable_session_reuse(self)
    }

    fn get_full_client_certificate_chain(&mut self) -> Result<Option<String>, HostError> {
        client_tls::Host::get_full_client_certificate_chain(self)
    }

    fn get_client_certificate(
        &mut self,
    ) -> Result<Option<v0_2::tollgate::plugin::client_tls::ClientCertificate>, HostError> {
        use v0_2::tollgate::plugin::client_tls::{ClientCertificate, SubjectAltName};
        let Some(leaf) = client_tls::Host::get_client_certificate(self)? else {
            return Ok(None);
        };
        let san = |name| match name {
            client_tls::SubjectAltName::Dns(v) => SubjectAltName::Dns(v),
            client_tls::SubjectAltName::Email(v) => SubjectAltName::Email(v),
            client_tls::SubjectAltName::Uri(v) => SubjectAltName::Uri(v),
            client_tls::SubjectAltName::Ip(v) => SubjectAltName::Ip(v),
        };
        Ok(Some(ClientCertificate {
            subject: leaf.subject,
            issuer: leaf.issuer,
            subject_legacy: leaf.subject_legacy,
            issuer_legacy: leaf.issuer_legacy,
            common_names: leaf.common_names,
            serial: leaf.serial,
            fingerprint_sha1: leaf.fingerprint_sha1,
            fingerprint_sha256: leaf.fingerprint_sha256,
            subject_alt_names: leaf.subject_alt_names.into_iter().map(san).collect(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            pem: leaf.pem,
        }))
    }

    fn set_client_verify(&mut self, value: String) -> Result<(), HostError> {
        client_tls::Host::set_client_verify(self, value)
    }

    fn verify_client_chain(&mut self, ca_certs: String) -> Result<String, HostError> {
        client_tls::Host::verify_client_chain(self, ca_certs)
    }
}

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
