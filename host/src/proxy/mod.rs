//! The HTTP side of the gateway: routing, path normalization, the upstream client, proxy header
//! hygiene, and the built-in demo upstream. The server that drives a request's plugin phases is
//! [`gateway`](crate::gateway) (with [`lifecycle`](crate::lifecycle)).

pub mod echo;
pub mod forwarding;
pub mod path;
pub mod router;
pub mod upstream;
