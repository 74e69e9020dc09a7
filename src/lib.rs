//! hoglet: PostHog's Users REST API as one small, fast binary.
//!
//! `main.rs` only parses the command line; everything lives here so tests run the real app.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backup;
pub mod cache;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod geoip;
pub mod github;
pub mod http;
pub mod import;
pub mod kv;
pub mod mail;
pub mod metrics;
pub mod outbox;
pub mod passwords;
pub mod ratelimit;
pub mod redis_link;
pub mod secret_key;
pub mod serve;
pub mod service;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod web;

pub use config::Config;
pub use serve::{App, BuildOptions};
pub use state::AppState;
