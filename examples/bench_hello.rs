//! The benchmark's reference: a bare axum server answering every GET with the same fixed JSON
//! bytes (by default a ~1.9 KB body; `--body FILE` serves a captured `@me` body instead).
//!
//! Same axum, hyper and tokio as hoglet, and the same runtime setup as `hoglet serve` (a
//! multi-threaded runtime sized by the CPUs the process may run on), so pinned to one core both
//! run one worker thread. Prints `bench_hello listening on http://HOST:PORT` when ready.

use std::io::Write;
use std::path::PathBuf;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Bare axum fixed-JSON server (benchmark reference)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: String,
    /// File whose bytes are the response body.
    #[arg(long)]
    body: Option<PathBuf>,
}

/// A JSON object of about 1.9 KB, shaped like a user.
fn default_body() -> Bytes {
    let mut fields = serde_json::Map::new();
    fields.insert("uuid".into(), "0190c3a4-5b6d-7e8f-9a0b-1c2d3e4f5a6b".into());
    fields.insert("email".into(), "bench2@example.com".into());
    let mut n = 0;
    while serde_json::to_vec(&fields).map_or(0, |v| v.len()) < 1900 {
        fields.insert(format!("field_{n:03}"), format!("value-{n:08}").into());
        n += 1;
    }
    Bytes::from(serde_json::to_vec(&fields).unwrap_or_default())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = match &args.body {
        Some(path) => Bytes::from(std::fs::read(path)?),
        None => default_body(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = Router::new().fallback(move || {
            let body = body.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    body,
                )
                    .into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind(&args.bind).await?;
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "bench_hello listening on http://{addr}")?;
            out.flush()?;
        }
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
