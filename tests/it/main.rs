//! The integration-test binary: every module starts the real `confab` server and talks to it over sockets.

mod support;

mod admin;
mod auth;
mod bad_input;
mod catchup;
mod cors;
mod dm;
mod durability;
mod edits;
mod files;
mod history;
mod idempotency;
mod limits;
mod ops;
mod presence;
mod proxies;
mod receipts;
mod resources;
mod rooms;
mod search;
mod slow_consumer;
mod timeouts;
mod typing;
