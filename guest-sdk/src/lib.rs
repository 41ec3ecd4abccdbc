//! Write [Tollgate](https://example.invalid/tollgate) gateway plugins in Rust.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip1`. It implements [`Plugin`] (only the
//! phases it needs) in a block marked [`#[plugin]`](plugin), which declares to the gateway
//! exactly the phase methods the block implements and exports the plugin. The gateway loads the
//! `.wasm` file at run time.
//!
//! ```
//! use tollgate_sdk::{client_tls, request, PhaseResult, Plugin};
//!
//! /// Asks every client for a certificate and forwards how many it sent.
//! struct CountCerts {
//!     header: String,
//! }
//!
//! #[tollgate_sdk::plugin]
//! impl Plugin for CountCerts {
//!     fn configure(config: &str) -> Result<Self, String> {
//!         // Real plugins parse `config` (JSON) with serde_json.
//!         let header = if config.contains("x-certs") { "x-certs" } else { "x-client-certs" };
//!         Ok(CountCerts { header: header.to_string() })
//!     }
//!
//!     fn certificate(&mut self) -> PhaseResult {
//!         client_tls::request_client_certificate(None)?;
//!         Ok(())
//!     }
//!
//!     fn access(&mut self) -> PhaseResult {
//!         let count = client_tls::get_full_client_certificate_chain()?
//!             .map_or(0, |pem| pem.matches("-----BEGIN CERTIFICATE-----").count());
//!         request::set_header(&self.header, &count.to_string())?;
//!         Ok(())
//!     }
//! }
//!
//! // The declared phases are the implemented ones:
//! use tollgate_sdk::Phase;
//! assert_eq!(tollgate_sdk::declared_phases::<CountCerts>(), [Phase::Certificate, Phase::Access]);
//!
//! // Compiled natively (as in `cargo test`), the SDK talks to an in-process mock instead of the
//! // gateway, so plugin logic can be unit-tested without wasm:
//! use tollgate_sdk::mock::{self, MockHost, MockTls};
//!
//! mock::install(MockHost {
//!     phase: Phase::Access,
//!     tls: Some(MockTls::with_chain("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")),
//!     ..MockHost::default()
//! });
//! let mut plugin = CountCerts::configure("{}").unwrap();
//! plugin.access().unwrap();
//! assert_eq!(mock::with(|host| host.request_header("x-client-certs")), Some("1".to_string()));
//!
//! // The phase table and the argument rules apply to the mock too, with the gateway's messages:
//! mock::with(|host| host.phase = Phase::Log);
//! assert_eq!(
//!     client_tls::request_client_certificate(None).unwrap_err().to_string(),
//!     "function cannot be called in log phase (only in: certificate)"
//! );
//! ```
//!
//! Phases are never listed by hand: [`Plugin`] has no such item, and `#[plugin]` refuses one.
//!
//! ```compile_fail
//! use tollgate_sdk::{Phase, PhaseResult, Plugin};
//!
//! struct Stamp;
//!
//! #[tollgate_sdk::plugin]
//! impl Plugin for Stamp {
//!     const PHASES: &'static [Phase] = &[Phase::Access]; // error: remove `PHASES`
//!
//!     fn configure(_: &str) -> Result<Self, String> { Ok(Stamp) }
//!     fn header_filter(&mut self) -> PhaseResult { Ok(()) }
//! }
//! ```
//!
//! Without `#[plugin]` there is no export, and so no plugin for the gateway to load:
//! [`declared_phases`] does not compile for such a type.
//!
//! ```compile_fail
//! use tollgate_sdk::{PhaseResult, Plugin};
//!
//! struct Unexported;
//!
//! impl Plugin for Unexported {
//!     fn configure(_: &str) -> Result<Self, String> { Ok(Unexported) }
//!     fn header_filter(&mut self) -> PhaseResult { Ok(()) }
//! }
//!
//! let _ = tollgate_sdk::declared_phases::<Unexported>();
//! ```
//!
//! Every function returns a typed [`Error`] instead of trapping; the SDK itself never panics on
//! a host error. A phase method's error fails that phase for this request (the gateway answers
//! 500 unless the plugin is configured `fail_open`).

// `#[plugin]` expands to paths through `::tollgate_sdk`, which this crate's own tests use too.
extern crate self as tollgate_sdk;

mod api;
#[cfg(not(target_arch = "wasm32"))]
pub mod mock;

pub use api::{balancer, client_tls, connection, context, log, request, response};
pub use tollgate_phases::{ClientCertificate, ClientVerify, Phase, SubjectAltName, Target};
pub use tollgate_sdk_macros::plugin;

use std::fmt;

/// Why the gateway refused a host call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The function is not allowed in the current phase; the message is the gateway's.
    WrongPhase(String),
    /// An argument was rejected.
    InvalidArgument(String),
    /// The function needs TLS and the connection is plaintext.
    NotTls,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WrongPhase(message) | Error::InvalidArgument(message) => f.write_str(message),
            Error::NotTls => f.write_str("connection is not TLS"),
        }
    }
}

impl std::error::Error for Error {}

/// A phase method's failure: any error converts into it with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseError {
    message: String,
}

impl PhaseError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        PhaseError {
            message: message.into(),
        }
    }

    /// The message the gateway logs.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: fmt::Display> From<E> for PhaseError {
    fn from(err: E) -> Self {
        PhaseError::new(err.to_string())
    }
}

/// What a phase method returns.
pub type PhaseResult = Result<(), PhaseError>;

/// A Tollgate plugin. Implement only the phases you need, in a block marked
/// [`#[plugin]`](plugin): the phases it implements are the ones the gateway runs it in.
///
/// The gateway runs [`Plugin::configure`] once when it loads the plugin and snapshots the
/// configured instance; each request (and each connection, for `certificate`) gets a fresh
/// instance started from that snapshot. A plugin the snapshot cannot carry (one that left a WASI
/// stream open in `configure`) has `configure` run in every instance, so keep it quick and
/// deterministic, and never sleep in it: it has the plugin's time limit, like any call.
/// The phase methods of one request run on that one value, so they take `&mut self`: a field
/// set in `access` is there in `log`, with no `RefCell` and no round trip through the context.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its configuration (JSON). An `Err` rejects the configuration at
    /// load time with that message.
    fn configure(config: &str) -> Result<Self, String>;

    /// After the ClientHello, before the server answers: request a client certificate, turn off
    /// session reuse. Runs once per connection.
    fn certificate(&mut self) -> PhaseResult {
        Ok(())
    }

    /// Request head received, before routing decisions are final.
    fn rewrite(&mut self) -> PhaseResult {
        Ok(())
    }

    /// After routing: authenticate, authorise, or answer the request with [`response::exit`].
    fn access(&mut self) -> PhaseResult {
        Ok(())
    }

    /// Choosing the upstream target; runs again for each retry.
    fn balancer(&mut self) -> PhaseResult {
        Ok(())
    }

    /// Upstream response head received, before it is sent to the client.
    fn header_filter(&mut self) -> PhaseResult {
        Ok(())
    }

    /// One chunk of the response body; replace it with [`response::set_body_chunk`].
    fn body_filter(&mut self, chunk: &[u8], end_of_stream: bool) -> PhaseResult {
        let _ = (chunk, end_of_stream);
        Ok(())
    }

    /// After the response is sent.
    fn log(&mut self) -> PhaseResult {
        Ok(())
    }
}

/// The phases a [`#[plugin]`](plugin) type declares to the gateway: the phase methods its block
/// implements, in canonical order. For a plugin's own tests.
pub fn declared_phases<P: __private::Declared>() -> &'static [Phase] {
    P::PHASES
}

/// Exports a [`Plugin`] as the component's `tollgate:plugin/handler`; `#[plugin]` expands to it.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            struct TollgateExport;

            impl $crate::__private::Guest for TollgateExport {
                fn configure(config: String) -> Result<(), String> {
                    $crate::__private::configure::<$plugin>(&config)
                }
                fn phases() -> Vec<$crate::__private::WitPhase> {
                    $crate::__private::phases::<$plugin>()
                }
                fn on_certificate() -> Result<(), String> {
                    $crate::__private::run::<$plugin>(|p| $crate::Plugin::certificate(p))
                }
                fn on_rewrite() -> Result<(), String> {
                    $crate::__private::run::<$plugin>(|p| $crate::Plugin::rewrite(p))
                }
                fn on_access() -> Result<(), String> {
                    $crate::__private::run::<$plugin>(|p| $crate::Plugin::access(p))
                }
                fn on_balancer() -> Result<(), String> {
                    $crate::__private::run::<$plugin>(|p| $crate::Plugin::balancer(p))
                }
                fn on_header_filter() -> Result<(), String> {
                    $crate::__private::run::<$plugin>(|p| $crate::Plugin::header_filter(p))
                }
                fn on_body_filter(chunk: Vec<u8>, end_of_stream: bool) -> Result<(), String> {
                    $crate::__private::run::<$plugin>(|p| {
                        $crate::Plugin::body_filter(p, &chunk, end_of_stream)
                    })
                }
                fn on_log() -> Result<(), String> {
                    $crate::__private::run::<$plugin>(|p| $crate::Plugin::log(p))
                }
            }

    $crate::__private::export!(TollgateExport with_types_in $crate::__private::bindings);
        };
    };
}

/// Support for [`#[plugin]`](plugin); not a public API.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    pub use crate::api::bindings;
    pub use crate::api::bindings::export;
    pub use crate::api::bindings::exports::tollgate::plugin::handler::Guest;
    pub use crate::api::bindings::tollgate::plugin::types::Phase as WitPhase;
    use crate::{Phase, Plugin};

    pub use crate::__export_plugin as export_plugin;

    /// The phases a plugin declares; implemented by `#[plugin]` only, from the methods of the
    /// plugin's `impl` block.
    pub trait Declared: Plugin {
        /// The implemented phase methods, in canonical order.
        const PHASES: &'static [Phase];
    }

    thread_local! {
        /// The configured plugin of this instance (one plugin per module).
        static PLUGIN: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn configure<P: Plugin>(config: &str) -> Result<(), String> {
        let plugin = P::configure(config)?;
        PLUGIN.with(|slot| *slot.borrow_mut() = Some(Box::new(plugin)));
        Ok(())
    }

    pub fn phases<P: Declared>() -> Vec<WitPhase> {
        P::PHASES.iter().map(|phase| wit_phase(*phase)).collect()
    }

    pub fn run<P: Plugin>(
        handler: impl FnOnce(&mut P) -> crate::PhaseResult,
    ) -> Result<(), String> {
        PLUGIN.with(|slot| {
            let mut slot = slot.borrow_mut();
            let plugin = slot
                .as_mut()
                .and_then(|plugin| plugin.downcast_mut::<P>())
                .ok_or_else(|| "plugin called before configure".to_string())?;
            handler(plugin).map_err(|err| err.message().to_string())
        })
    }

    fn wit_phase(phase: Phase) -> WitPhase {
        match phase {
            Phase::Certificate => WitPhase::Certificate,
            Phase::Rewrite => WitPhase::Rewrite,
            Phase::Access => WitPhase::Access,
            Phase::Balancer => WitPhase::Balancer,
            Phase::HeaderFilter => WitPhase::HeaderFilter,
            Phase::BodyFilter => WitPhase::BodyFilter,
            Phase::Log => WitPhase::Log,
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
