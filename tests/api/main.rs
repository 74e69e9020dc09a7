//! One integration-test binary: every test starts the real app on port 0 against a real database
//! (a temporary SQLite file, and a fresh Postgres database when `HOGLET_TEST_POSTGRES_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod fake_github;
mod helpers;

mod accounts;
mod activity;
mod api_keys;
mod api_keys_auth;
mod backup;
mod cli;
mod cli_recovery;
mod config;
mod deploy;
mod export;
mod geoip;
mod github;
mod hardening;
mod hygiene;
mod import_posthog;
mod import_source;
mod login_sessions;
mod operations;
mod outbox;
mod replicas;
mod request_ids;
mod resilience;
mod signal_autonomy;
mod store_contract;
mod two_factor;
mod use_cases;
mod users;
mod users_actions;
mod users_list;
mod users_update;
mod web_browser;
mod web_browser_flows;
mod web_pages;
mod web_settings;
