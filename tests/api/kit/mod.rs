//! The test kit: everything a black-box test needs, one concern per file.
//!
//! | File | Holds |
//! | --- | --- |
//! | [`app`] | the app harness: [`spawn_app`] and friends, [`TestApp`], [`eventually`] |
//! | [`client`] | the typed API client (methods on [`TestApp`]), buyer [`token`]s, answer assertions |
//! | [`flood`] | floods and invariant checks, thin wrappers over the `flashsale-bench` crate |
//! | [`raw`] | raw HTTP: hand-written requests, a purchase held open with `100 Continue` |
//! | [`process`] | child processes: the real `flashsale serve` binary, free ports, SIGTERM |
//! | [`backends`] | the distributed mode's services, isolated per test; private Redis servers |
//! | [`sse`] | server-sent events read from an answer's body |
//! | [`drill`] | the fault drills' reports (docs/RELIABILITY.md, `scripts/drills.sh`) |
//! | [`redis_ha`] | replicated Redis, Sentinels and network-playing proxies for the failover drills |
//!
//! Tests import from here (`use crate::kit::{spawn_app, token};`).

pub mod app;
pub mod backends;
pub mod client;
pub mod drill;
pub mod flood;
pub mod process;
pub mod raw;
pub mod redis_ha;
pub mod sse;

pub use app::{
    eventually, spawn_app, spawn_app_on, spawn_app_on_with, spawn_app_with, TestApp, ADMIN_TOKEN,
    JWT_SECRET,
};
pub use backends::{redis_sold, Backends, Db, RedisServers, AMQP};
pub use client::{
    assert_error, assert_error_shape, json_ok, json_status, num, open_sale_body, time_in, token,
};
pub use flood::{
    accepted_orders, assert_only, check_flood, check_orders_readable, check_stored, flood,
    flood_nodes, flood_with, no_answer, NO_ANSWER,
};
pub use process::{
    free_port, serve_command, serving, sigterm, start_binary, start_binary_with, unique_admin_token,
};
pub use raw::{parse_raw_answer, raw_http, SlowPurchase};
pub use sse::EventReader;
