//! Confab: an embeddable, single-binary chat server.
//!
//! Modules in reading order, lowest layer first: `model` and `protocol` (plain data and the
//! wire format), `config`, `metrics`; `auth` and `store` beside each other; `chat` (the hub)
//! above them; `server` (HTTP and WebSocket) on top; `app` wires them. See ARCHITECTURE.md.

pub mod model;
pub mod protocol;
pub mod config;
pub mod metrics;
pub mod auth;
pub mod store;
pub mod chat;
pub mod server;
pub mod app;

pub use app::App;
