//! The HTTP side of the gateway: routing, the upstream client, proxy header hygiene, the server
//! that drives plugin phases per request, and the built-in demo upstream.

pub mod echo;
pub mod forwarding;
pub mod path;
pub mod router;
pub mod upstream;
