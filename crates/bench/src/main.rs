//! `viberglass-bench`: starts `viberglass serve` on each backend, measures
//! its idle memory, then drives ticket creation and listing and the web UI's
//! pages over HTTP from concurrent clients and prints throughput and latency
//! percentiles.
//!
//! Run it through `scripts/bench`, which builds both binaries in release mode.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use sqlx::Connection;

mod engine;
mod wrk;

/// A row for the closing table: (backend, workload, connections, req/s, p99 ms).
type Row = (String, String, usize, f64, f64);

static SUMMARY: std::sync::Mutex<Vec<Row>> = std::sync::Mutex::new(Vec::new());

fn record(backend: &str, workload: &str, connections: usize, rps: f64, p99: f64) {
    if let Ok(mut rows) = SUMMARY.lock() {
        rows.push((backend.to_owned(), workload.to_owned(), connections, rps, p99));
    }
}

#[derive(Parser)]
#[command(about = "Benchmark a viberglass server on SQLite and PostgreSQL")]
struct Args {
    /// The viberglass binary to benchmark.
    #[arg(long, default_value = "target/release/viberglass")]
    binary: PathBuf,
    /// A PostgreSQL URL the benchmark may create a database on; PostgreSQL is skipped without it.
    #[arg(long, env = "BENCH_DATABASE_URL")]
    postgres: Option<String>,
    /// Tickets to create.
    #[arg(long, default_value_t = 2000)]
    creates: usize,
    /// List requests to send.
    #[arg(long, default_value_t = 1000)]
    lists: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Signed webhook deliveries to send, at each of 16 and 32 connections.
    #[arg(long, default_value_t = 4000)]
    webhooks: usize,
    /// Events delivered to an outbound webhook subscription (a local receiver verifying every signature).
    #[arg(long, default_value_t = 2000)]
    outbound: usize,
    /// Jobs for the queue benchmark (claim + complete, no worker).
    #[arg(long, default_value_t = 2000)]
    queue_jobs: usize,
    /// Runs for the dispatch-latency benchmark (run request → worker started).
    #[arg(long, default_value_t = 50)]
    dispatches: usize,
    /// Events for the outbox benchmark (written, then consumed).
    #[arg(long, default_value_t = 8000)]
    outbox_events: usize,
    /// A worker image: the dispatch benchmark then times Docker workers too.
    #[arg(long, env = "VIBERGLASS_BENCH_DOCKER_IMAGE")]
    docker_image: Option<String>,
    /// Time Kubernetes workers too, on the testkit's fake API server (its node
    /// runs pods as local processes: this times the server's side of the
    /// cluster API and the worker, not a real cluster's scheduling and pulls).
    #[arg(long)]
    kubernetes: bool,
    /// Only the store-level benchmarks (queue and outbox), which need no server binary.
    #[arg(long)]
    store_only: bool,
    /// Seconds per timed `wrk` run (after a warm-up run); 0 skips the wrk workloads.
    #[arg(long, default_value_t = 30)]
    wrk_seconds: u32,
    /// Seconds of warm-up before each timed `wrk` run.
    #[arg(long, default_value_t = 5)]
    wrk_warmup: u32,
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    binary: &PathBuf,
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    env: &[(String, String)],
) -> Result<Server> {
    let mut command = Command::new(binary);
    command.envs(env.iter().cloned());
    command
        .args(["serve", "--port", "0"])
        .env("VIBERGLASS_DATA_DIR", data_dir)
        .env("LOG_FORMAT", "json")
        .env("VIBERGLASS_ALLOW_LOCAL_REPOSITORIES", "true")
        .env("VIBERGLASS_SANDBOX_PATHS", engine::REPOS)
        // The Docker workers reach the bench's server on loopback.
        .env("VIBERGLASS_DOCKER_ALLOW_HOST_NETWORK", "true")
        // The outbound benchmark's receiver listens on loopback.
        .env("VIBERGLASS_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("LOG_LEVEL", "info")
        .env_remove("DATABASE_URL")
        .env_remove("VIBERGLASS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url).env("SECRETS_ENCRYPTION_KEY", "cd".repeat(32));
    }
    let mut child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("server stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining the server's log so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.split("listening on http://").nth(1) {
                let address: String =
                    rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
                let _ = tx.send(address);
                sent = true;
            }
        }
    });
    let address = rx.recv_timeout(Duration::from_secs(60)).context("the server did not report its address")?;
    Ok(Server { child, base: format!("http://{address}") })
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

struct Stats {
    requests: usize,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
        sorted[index].as_secs_f64() * 1000.0
    }

    fn print(&self, backend: &str, operation: &str, concurrency: usize) {
        record(backend, operation, concurrency, self.requests as f64 / self.wall.as_secs_f64(), self.percentile(99.0));
        println!(
            "{backend:<9} {operation:<15} {:>8} {concurrency:>5} {:>10.0} {:>8.2} {:>8.2} {:>8.2}",
            self.requests,
            self.requests as f64 / self.wall.as_secs_f64(),
            self.percentile(50.0),
            self.percentile(99.0),
            self.percentile(100.0),
        );
    }
}

/// Sends `count` requests from `concurrency` clients and times each.
async fn drive<F, Fut>(count: usize, concurrency: usize, request: F) -> Result<Stats>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    let results: Vec<Result<Duration>> = futures::stream::iter(0..count)
        .map(|i| {
            let fut = request(i);
            async move {
                let t = Instant::now();
                fut.await?;
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();
    let latencies = results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(Stats { requests: count, wall, latencies })
}

/// Creates the first administrator and returns a client sending an API
/// token, as a real API client would (every request is authenticated).
pub async fn signed_in(base: &str, concurrency: usize) -> Result<(reqwest::Client, String)> {
    let plain = reqwest::Client::new();
    let setup = plain
        .post(format!("{base}/api/v1/setup"))
        .json(&serde_json::json!({"email": "bench@example.com", "password": "bench-password-123"}))
        .send()
        .await?;
    let cookie = setup
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("setup gave no session cookie ({})", setup.status()))?
        .to_owned();
    let token: serde_json::Value = plain
        .post(format!("{base}/api/v1/me/tokens"))
        .header("cookie", cookie)
        .json(&serde_json::json!({"name": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let token = token["token"].as_str().ok_or_else(|| anyhow::anyhow!("no token: {token}"))?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    Ok((
        reqwest::Client::builder().pool_max_idle_per_host(concurrency).default_headers(headers).build()?,
        token.to_owned(),
    ))
}

async fn bench_backend(args: &Args, backend: &str, database_url: Option<&str>) -> Result<()> {
    let data_dir = tempfile::tempdir()?;
    // The fake cluster lives as long as this backend's server.
    let kube = match (backend, args.kubernetes) {
        ("sqlite", true) => {
            let kube = viberglass_testkit::fake_kube::FakeKube::start().await;
            kube.add_image(
                engine::KUBE_IMAGE,
                viberglass_testkit::fake_kube::FakeImage {
                    entrypoint: args.binary.clone(),
                    env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
                    pull_secret: None,
                },
            );
            Some(kube)
        }
        _ => None,
    };
    let mut env = Vec::new();
    if let Some(kube) = &kube {
        env.push(("VIBERGLASS_KUBECONFIG".to_owned(), kube.kubeconfig(data_dir.path()).display().to_string()));
        env.push(("VIBERGLASS_KUBERNETES_NAMESPACES".to_owned(), "viberglass".to_owned()));
    }
    let server = start(&args.binary, data_dir.path(), database_url, &env)?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let base = Arc::new(server.base.clone());
    for _ in 0..100 {
        if client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(server.child.id())?;
    let (client, token) = signed_in(&base, args.concurrency).await?;
    if backend == "sqlite" {
        engine::dispatch(&client, &base, args.dispatches, args.docker_image.as_deref(), kube.is_some()).await?;
    }

    let project = client
        .post(format!("{base}/api/v1/projects"))
        .json(&serde_json::json!({"name": "Bench", "slug": "bench"}))
        .send()
        .await?;
    if project.status() != 201 {
        bail!("creating the project failed: {}", project.text().await?);
    }

    let create = drive(args.creates, args.concurrency, |i| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let response = client
                .post(format!("{base}/api/v1/projects/bench/tickets"))
                .json(&serde_json::json!({
                    // One ticket in a hundred mentions the checkout, as a search would find.
                    "title": if i % 100 == 0 {
                        format!("Ticket {i}: the checkout button does nothing")
                    } else {
                        format!("Ticket {i}: the layout shifts on small screens")
                    },
                    "description": "Steps to reproduce: open the page, resize the window. Expected: no shift.",
                    "severity": "medium",
                }))
                .send()
                .await?;
            if response.status() != 201 {
                bail!("create returned {}", response.status());
            }
            Ok(())
        }
    })
    .await?;

    let list_at = |query: &'static str, connections: usize| {
        let client = client.clone();
        let base = base.clone();
        drive(args.lists, connections, move |_| {
            let client = client.clone();
            let base = base.clone();
            async move {
                let response =
                    client.get(format!("{base}/api/v1/tickets?project=bench&limit=50{query}")).send().await?;
                if response.status() != 200 {
                    bail!("list returned {}", response.status());
                }
                let _ = response.bytes().await?;
                Ok(())
            }
        })
    };
    // Autovacuum vacuums and analyzes a table within a minute of 10,000 new
    // rows; until it does, PostgreSQL plans for the empty table it last saw (a
    // sort of every row) and every trigram search also reads the GIN indexes'
    // unmerged pending lists. Do it now so the lists measure the steady state.
    if let Some(url) = database_url {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::raw_sql("VACUUM ANALYZE").execute(&mut conn).await?;
        conn.close().await?;
    }
    // The first page of the whole table, then a search through it.
    let list = list_at("", args.concurrency).await?;
    let search = list_at("&q=checkout", args.concurrency).await?;

    // The web UI's pages, rendered from the same data: the dashboard, the
    // tickets page (50 rows) and one ticket's page.
    let listed: serde_json::Value =
        client.get(format!("{base}/api/v1/tickets?project=bench&limit=1")).send().await?.json().await?;
    let ticket = listed["items"][0]["id"].as_str().unwrap_or_default().to_owned();
    let pages = Arc::new(["/".to_owned(), "/tickets?project=bench".to_owned(), format!("/tickets/{ticket}")]);
    let page = drive(args.lists, args.concurrency, |i| {
        let client = client.clone();
        let base = base.clone();
        let pages = pages.clone();
        async move {
            let response = client.get(format!("{base}{}", pages[i % pages.len()])).send().await?;
            if response.status() != 200 {
                bail!("page {} returned {}", pages[i % pages.len()], response.status());
            }
            let _ = response.bytes().await?;
            Ok(())
        }
    })
    .await?;
    if args.wrk_seconds > 0 {
        if wrk::available() {
            let target = match database_url {
                Some(url) => viberglass_store::DatabaseTarget::Postgres { url: url.to_owned() },
                None => viberglass_store::DatabaseTarget::Sqlite { path: data_dir.path().join("viberglass.db") },
            };
            with_wrk(args, backend, &client, &base, &token, target).await?;
        } else {
            println!("{backend:<9} wrk workloads   (skipped: no `wrk` on the PATH; `apt-get install wrk`)");
        }
    }
    // Signed custom webhook → ticket (one transaction per delivery), at 16 and 32 connections.
    let secret = "bench-webhook-secret-0123";
    let config: serde_json::Value = client
        .post(format!("{base}/api/v1/projects/bench/webhooks"))
        .json(&serde_json::json!({"provider": "custom", "secret": secret}))
        .send()
        .await?
        .json()
        .await?;
    let hook = Arc::new(format!("{base}{}", config["path"].as_str().unwrap_or_default()));
    let mut webhooks = Vec::new();
    for (round, connections) in [16usize, 32].into_iter().enumerate() {
        let sender = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
        let stats = drive(args.webhooks, connections, |i| {
            let (sender, hook) = (sender.clone(), hook.clone());
            async move {
                let body = serde_json::json!({"title": format!("Webhook ticket {round}-{i}"),
                    "description": "Filed by a signed delivery.", "external_id": format!("B-{round}-{i}")});
                let delivery = viberglass_testkit::webhooks::custom(Some(secret), &body);
                let mut request = sender.post(hook.as_str()).body(delivery.body);
                for (k, v) in delivery.headers {
                    request = request.header(k, v);
                }
                let response = request.send().await?;
                if response.status() != 200 {
                    bail!("webhook returned {}: {}", response.status(), response.text().await.unwrap_or_default());
                }
                Ok(())
            }
        })
        .await?;
        webhooks.push((connections, stats));
    }
    let outbound = outbound_webhooks(&client, &base, args.outbound, args.concurrency).await?;
    let loaded = rss_kib(server.child.id())?;

    for (connections, stats) in &webhooks {
        stats.print(backend, "webhook→ticket", *connections);
    }
    if let Some((n, seconds)) = outbound {
        println!(
            "{backend:<9} {:<15} {n:>8} {:>5} {:>10.0}   (ticket filed → signed delivery received, end to end, in {seconds:.1} s)",
            "outbound hooks",
            args.concurrency,
            n as f64 / seconds
        );
    }
    create.print(backend, "ticket create", args.concurrency);
    list.print(backend, "ticket list", args.concurrency);
    search.print(backend, "ticket search", args.concurrency);
    page.print(backend, "UI pages", args.concurrency);
    record(backend, "idle RSS", 0, idle as f64 / 1024.0, 0.0);
    println!(
        "{backend:<9} {:<15} idle {:.1} MiB, after the run {:.1} MiB",
        "serve RSS",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0
    );
    // Start to ready on the database just migrated: the server stops, and
    // the clock runs from its exec to its first 200 from /readyz.
    drop(server);
    let mut starts = Vec::new();
    for _ in 0..5 {
        let began = Instant::now();
        let again = start(&args.binary, data_dir.path(), database_url, &env)?;
        let plain = reqwest::Client::new();
        while !plain.get(format!("{}/readyz", again.base)).send().await.is_ok_and(|r| r.status() == 200) {
            if began.elapsed() > Duration::from_secs(30) {
                bail!("the restarted server never became ready");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        starts.push(began.elapsed().as_secs_f64() * 1000.0);
        drop(again);
    }
    starts.sort_by(f64::total_cmp);
    record(backend, "start to ready", 0, starts[2], 0.0);
    println!(
        "{backend:<9} {:<15} median {:.0} ms, best {:.0} ms (5 restarts, exec to the first 200 from /readyz, migrated database)",
        "start to ready", starts[2], starts[0]
    );
    Ok(())
}

/// The table's HTTP workloads through `wrk` at 16 and 32 connections: the
/// list and search over the 10,000 tickets, a job poll (the job and its 50
/// log lines in one call), then ticket creation into a second project.
async fn with_wrk(
    args: &Args,
    backend: &str,
    client: &reqwest::Client,
    base: &str,
    token: &str,
    target: viberglass_store::DatabaseTarget,
) -> Result<()> {
    let job = engine::job_with_events(&target, "bench", 50).await?;
    let created = client
        .post(format!("{base}/api/v1/projects"))
        .json(&serde_json::json!({"name": "Wrk", "slug": "wrk"}))
        .send()
        .await?;
    if created.status() != 201 {
        bail!("creating the wrk project failed: {}", created.text().await?);
    }
    let workloads = [
        ("ticket list", format!("{base}/api/v1/tickets?project=bench&limit=50"), wrk::Script::Get),
        ("ticket search", format!("{base}/api/v1/tickets?project=bench&limit=50&q=checkout"), wrk::Script::Get),
        ("job poll", format!("{base}/api/v1/jobs/{job}/events?limit=50&include_job=true"), wrk::Script::Get),
        ("ticket create", format!("{base}/api/v1/projects/wrk/tickets"), wrk::Script::CreateTicket),
    ];
    for (name, url, script) in &workloads {
        for connections in [16, 32] {
            let (url, token) = (url.clone(), token.to_owned());
            let (warmup, seconds) = (args.wrk_warmup, args.wrk_seconds);
            let script = *script;
            let run =
                tokio::task::spawn_blocking(move || wrk::run(&url, &token, &script, connections, warmup, seconds))
                    .await?
                    .with_context(|| format!("wrk {name} at {connections} connections"))?;
            let label = format!("wrk {name}");
            record(backend, &label, connections, run.rps, run.p99_ms);
            println!(
                "{backend:<9} {label:<15} {:>8} {connections:>5} {:>10.0} {:>8.2} {:>8.2} {:>8}",
                run.requests, run.rps, run.p50_ms, run.p99_ms, "-"
            );
        }
    }
    Ok(())
}

/// The original's figures from issue 22 (wrk, one thread, 30 s) and each
/// workload's target as a multiple of them.
const ORIGINAL: &[(&str, usize, f64, f64)] = &[
    ("wrk ticket create", 16, 1233.0, 10.0),
    ("wrk ticket create", 32, 1458.0, 10.0),
    ("wrk ticket list", 16, 158.0, 20.0),
    ("wrk ticket search", 16, 65.0, 10.0),
    ("wrk job poll", 16, 1203.0, 10.0),
    ("webhook→ticket", 16, 623.0, 10.0),
];

fn print_ratios() {
    let Ok(rows) = SUMMARY.lock() else { return };
    println!();
    println!(
        "{:<9} {:<18} {:>5} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "backend", "workload", "conc", "original", "req/s", "ratio", "target", "p99 ms"
    );
    for (backend, workload, connections, rps, p99) in rows.iter() {
        let Some((_, _, original, target)) = ORIGINAL.iter().find(|(w, c, _, _)| w == workload && c == connections)
        else {
            continue;
        };
        println!(
            "{backend:<9} {workload:<18} {connections:>5} {original:>10.0} {rps:>10.0} {:>7.1}× {target:>7.0}× {p99:>8.2}",
            rps / original
        );
    }
    let pgbench = rows.iter().find(|r| r.1 == "pgbench").map(|r| r.3);
    for (backend, workload, connections, value, _) in rows.iter() {
        match (workload.as_str(), pgbench) {
            ("wrk ticket create", Some(tps)) if backend == "postgres" && tps > 0.0 => println!(
                "{backend:<9} {workload:<18} {connections:>5} {:.0}% of pgbench's {tps:.0} tx/s (target: two thirds)",
                value / tps * 100.0
            ),
            ("claim+complete", Some(tps)) if backend == "postgres" && tps > 0.0 => println!(
                "{backend:<9} {workload:<18} {connections:>5} {:.1}% of pgbench's {tps:.0} tx/s (target: half)",
                value / tps * 100.0
            ),
            ("idle RSS", _) => {
                println!("{backend:<9} {workload:<18} {value:>.1} MiB (original 117 MiB; target at most 12)")
            }
            ("start to ready", _) => {
                println!("{backend:<9} {workload:<18} {value:>.0} ms median (original 930 ms; target at most 100)")
            }
            _ => {}
        }
    }
}

/// Outbound webhooks: a subscription to `ticket.filed` on a local receiver (which verifies every signature with
/// the Standard Webhooks library), then `n` tickets filed; returns how many arrived and how long from the first
/// ticket to the last delivery.
async fn outbound_webhooks(
    client: &reqwest::Client,
    base: &str,
    n: usize,
    concurrency: usize,
) -> Result<Option<(usize, f64)>> {
    if n == 0 {
        return Ok(None);
    }
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = viberglass_testkit::receiver::Receiver::start(secret).await;
    let created = client
        .post(format!("{base}/api/v1/projects/bench/webhook-subscriptions"))
        .json(&serde_json::json!({"url": receiver.url(), "secret": secret, "events": ["ticket.filed"]}))
        .send()
        .await?;
    if created.status() != 201 {
        bail!("creating the subscription failed: {}", created.text().await?);
    }
    let started = std::time::Instant::now();
    drive(n, concurrency, |i| {
        let client = client.clone();
        let url = format!("{base}/api/v1/projects/bench/tickets");
        async move {
            let response = client
                .post(url)
                .json(&serde_json::json!({"title": format!("Outbound {i}"), "description": "d"}))
                .send()
                .await?;
            if response.status() != 201 {
                bail!("create returned {}", response.status());
            }
            Ok(())
        }
    })
    .await?;
    let filed = started.elapsed().as_secs_f64();
    let at_filed = receiver.accepted_count();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let got = receiver.accepted_count();
        if got >= n {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("only {got} of {n} outbound deliveries arrived within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unverified = receiver.unverified_count();
    if unverified > 0 {
        bail!("{unverified} outbound deliveries failed signature verification");
    }
    let total = started.elapsed().as_secs_f64();
    println!(
        "          outbound: {n} tickets filed in {filed:.1} s with {at_filed} delivered meanwhile; the other {} \
         delivered {:.1} s later ({:.0}/s with nothing else running)",
        n - at_filed,
        total - filed,
        (n - at_filed) as f64 / (total - filed).max(0.001)
    );
    Ok(Some((n, total)))
}

/// Creates a fresh database on the PostgreSQL server and returns its URL and name.
async fn fresh_postgres(admin: &str) -> Result<(String, String)> {
    let name = format!("vgbench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin).await.context("connecting to the PostgreSQL server")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    conn.close().await?;
    let base = admin.split('?').next().unwrap_or(admin);
    let root = &base[..base.rfind('/').filter(|i| *i > base.find("://").unwrap_or(0) + 2).unwrap_or(base.len())];
    Ok((format!("{root}/{name}"), name))
}

async fn drop_postgres(admin: &str, name: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// PostgreSQL's own single-row INSERT commit rate at 16 clients, from
/// pgbench on a scratch database: the ceiling a request that costs one
/// commit cannot pass, measured in the same run as the rest.
async fn pgbench(admin: &str, seconds: u32) -> Result<()> {
    let (url, name) = fresh_postgres(admin).await?;
    let result = (|| {
        let status = Command::new("psql")
            .args([url.as_str(), "-qAtc", "CREATE TABLE bench_rows (id BIGSERIAL PRIMARY KEY, v INT NOT NULL)"])
            .status()
            .context("running psql")?;
        if !status.success() {
            bail!("psql could not create the pgbench table");
        }
        let script = tempfile::NamedTempFile::new()?;
        std::fs::write(script.path(), "INSERT INTO bench_rows (v) VALUES (1);\n")?;
        let output = Command::new("pgbench")
            .args(["-n", "-c", "16", "-j", "2", "-T", &seconds.to_string(), "-f"])
            .arg(script.path())
            .arg(&url)
            .output()
            .context("running pgbench (from postgresql-client)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let tps = text
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .with_context(|| format!("pgbench printed no tps: {text}{}", String::from_utf8_lossy(&output.stderr)))?
            .to_owned();
        record("postgres", "pgbench", 16, tps.parse().unwrap_or(0.0), 0.0);
        println!(
            "{:<9} {:<15} {:>8} {:>5} {:>10}   (pgbench, single-row INSERT, {seconds} s)",
            "postgres",
            "commit rate",
            "-",
            16,
            tps.split('.').next().unwrap_or(&tps)
        );
        Ok(())
    })();
    drop_postgres(admin, &name).await?;
    result
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.store_only && !args.binary.exists() {
        bail!("{} does not exist: build it with `cargo build --release -p viberglass`", args.binary.display());
    }
    println!(
        "{:<9} {:<15} {:>8} {:>5} {:>10} {:>8} {:>8} {:>8}",
        "backend", "operation", "requests", "conc", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    if !args.store_only {
        bench_backend(&args, "sqlite", None).await?;
    }
    let queue_dir = tempfile::tempdir()?;
    let sqlite = viberglass_store::DatabaseTarget::Sqlite { path: queue_dir.path().join("queue.db") };
    engine::queue("sqlite", sqlite, args.queue_jobs, 4).await?;
    let outbox_db = viberglass_store::DatabaseTarget::Sqlite { path: queue_dir.path().join("outbox.db") };
    engine::outbox("sqlite", outbox_db, args.outbox_events, 4).await?;
    match &args.postgres {
        Some(admin) => {
            if let Err(err) = pgbench(admin, 10).await {
                println!("postgres  commit rate     (skipped: {err:#})");
            }
            if !args.store_only {
                let (url, name) = fresh_postgres(admin).await?;
                let result = bench_backend(&args, "postgres", Some(&url)).await;
                drop_postgres(admin, &name).await?;
                result?;
            }
            let (url, name) = fresh_postgres(admin).await?;
            let result =
                engine::queue("postgres", viberglass_store::DatabaseTarget::Postgres { url }, args.queue_jobs, 4).await;
            drop_postgres(admin, &name).await?;
            result?;
            let (url, name) = fresh_postgres(admin).await?;
            let target = viberglass_store::DatabaseTarget::Postgres { url };
            let result = engine::outbox("postgres", target, args.outbox_events, 16).await;
            drop_postgres(admin, &name).await?;
            result?;
        }
        None => println!("postgres  (skipped: pass --postgres or set BENCH_DATABASE_URL)"),
    }
    print_ratios();
    Ok(())
}
