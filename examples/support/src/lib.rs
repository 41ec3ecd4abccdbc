//! Helpers the example plugins share, kept in one crate so that each is written, and tested,
//! once:
//!
//! - [`sni`]: the `snis` setting of Kong's TLS plugins (exact names and `*.` / `.*` wildcards);
//! - [`dn`]: distinguished names as nginx's `$ssl_client_s_dn` prints them.

pub mod dn;
pub mod sni;
