#![forbid(unsafe_code)]
//! Test support for Viberglass: isolated databases on both backends,
//! `TestApp::spawn()` for a real server on port 0, and the fakes.
//!
//! Tests that should hold on both stores are written once as
//! `async fn name(backend: TestBackend)` and listed in [`backend_tests!`],
//! which makes one `#[tokio::test]` per backend: `name::sqlite` and
//! `name::postgres`.

pub mod app;
pub mod aws_proxy;
pub mod db;
pub mod fake_forge;
pub mod fake_kube;
pub mod fake_slack;
pub mod fake_tracker;
pub mod forge;
pub mod git;
pub mod lambda_runtime;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod moto;
pub mod otlp;
pub mod process;
pub mod receiver;
pub mod webhooks;

pub use app::TestApp;
pub use db::{TestBackend, TestDb};

/// Serves a fake's router on a loopback port until the token is cancelled; its address and the token.
pub async fn serve_fake(app: axum::Router) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("the port's address");
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await.ok();
    });
    (address, stop)
}

/// Notes in the ledger `scripts/test` keeps (`VIBERGLASS_TEST_LEDGER`) that
/// a test really ran (and passed), so the script can count tests that ran
/// rather than `... ok` lines, which skipped tests print too.
pub fn record_ran(name: &str) {
    use std::io::Write;
    let Ok(path) = std::env::var("VIBERGLASS_TEST_LEDGER") else { return };
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{name}");
    }
}

/// Declares one test per backend for each listed `async fn(TestBackend)`.
/// PostgreSQL runs when `TEST_DATABASE_URL` is set; under `CI=true` its
/// absence fails the test instead of skipping it.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::TestBackend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if $crate::TestBackend::postgres_available() {
                        super::$name($crate::TestBackend::Postgres).await;
                        $crate::record_ran(concat!(module_path!(), "::postgres"));
                    }
                }
            }
        )*
    };
}
