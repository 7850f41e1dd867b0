//! Herald's integration tests: a real server on a random port, real HTTP.

mod browser;
mod browser_client;
mod cluster;
mod demo;
mod helpers;
mod idempotency;
mod js_client;
mod lifecycle;
mod limits;
mod process;
mod protocol;
mod proxy;
mod publish;
mod resume;
mod retention;
mod storage;
mod streams;
mod tls;
mod tokens;
