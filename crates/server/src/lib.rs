//! The Viberglass server: configuration, the HTTP API, telemetry and the
//! startup sequence. Only this crate knows HTTP routing.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod extract;
pub mod hosts;
pub mod identity;
pub mod metrics;
pub mod outbound;
pub mod outbox;
pub mod request;
pub mod schedules;
pub mod serve;
pub mod service;
pub mod slack;
pub mod sources;
pub mod telemetry;
pub mod ui;
pub mod vault;

pub use app::{AppState, build_router};
pub use config::{Config, ConfigError};
pub use serve::{StartupError, run, serve};
