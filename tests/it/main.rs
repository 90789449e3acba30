//! The integration-test binary: every module starts the real `confab` server and talks to it over sockets.

mod support;

mod admin;
mod auth;
mod auth_limits;
mod bad_input;
mod catchup;
mod clock;
mod cors;
mod disk_full;
mod dm;
mod durability;
mod edges;
mod edits;
mod files;
mod history;
mod idempotency;
mod identity;
mod limits;
mod ops;
mod order;
mod presence;
mod proxies;
mod receipts;
mod resources;
mod rooms;
mod search;
mod slow_consumer;
mod timeouts;
mod typing;
