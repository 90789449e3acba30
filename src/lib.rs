//! Confab: an embeddable, single-binary chat server.
//!
//! Modules in reading order, lowest layer first: `model` and `protocol` (plain data and the
//! wire format), `config`, `metrics`; `auth` and `store` beside each other; `files` (uploads
//! on disk, records in the store) and `search` (the tantivy index) above `store`; `chat` (the hub) above them; `server` (HTTP and WebSocket) on top; `app` wires them. See ARCHITECTURE.md.

pub mod app;
pub mod auth;
pub mod chat;
pub mod config;
pub mod files;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod search;
pub mod server;
pub mod store;

pub use app::App;
