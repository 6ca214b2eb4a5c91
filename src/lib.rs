//! Flashsale: a flash-sale (seckill) engine.
//!
//! Sells N units of an item to a crowd that arrives all at once, without ever
//! overselling, selling a user past the per-user limit, or losing an order
//! once the buyer was told "accepted".
//!
//! Layout: [`config`] (settings), [`telemetry`] (logs, metrics), [`app`]
//! (wiring and lifecycle), [`http`] (the contract's routes), [`domain`]
//! (validated types and allocation rules), [`engine`] (live sale state and
//! the purchase decision), [`backend`] (storage seam), [`worker`]
//! (background jobs). The load tool is the `flashsale-bench` crate
//! (`crates/flashsale-bench`), which `flashsale bench` runs.

pub mod app;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod http;
pub mod outbound;
pub mod signed;
pub mod telemetry;
pub mod worker;

pub use app::Application;
pub use config::Settings;
