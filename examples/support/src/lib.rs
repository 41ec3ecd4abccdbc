//! Helpers the example plugins share, kept in one crate so that each is written, and tested,
//! once: [`sni`], the `snis` setting of Kong's TLS plugins (exact names and `*.` / `.*`
//! wildcards). Certificates need no helper here: the gateway reads them
//! (`client_tls::get_client_certificate`).

pub mod sni;
