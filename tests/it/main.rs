//! The integration-test binary: every module starts the real `confab` server and talks to it over sockets.

mod support;

mod auth;
mod bad_input;
mod dm;
mod durability;
mod edits;
mod history;
mod idempotency;
mod ops;
mod rooms;
