//! Job-engine benchmarks: the queue alone (claim + complete, no worker) on
//! each store, and dispatch latency (run request → worker process started)
//! on the local compute target.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use viberglass_domain::{ClankerInput, HarnessSpec, JobId, JobSpec, NewClanker, NewProject, Phase};
use viberglass_store::{DatabaseTarget, NewJob, Outcome, PoolSettings, Store};

use crate::Stats;

fn spec() -> JobSpec {
    JobSpec {
        phase: Phase::Execution,
        repository_url: "file:///srv/repo.git".into(),
        base_branch: "main".into(),
        branch: "viberglass/bench".into(),
        prompt: "bench".into(),
        harness: HarnessSpec::Command { command: vec!["true".into()] },
        instruction_files: Vec::new(),
        max_execution_secs: 600,
        heartbeat_interval_secs: 5,
        heartbeat_grace_secs: 60,
        keep_workspace_on_failure: false,
        ticket_title: "bench".into(),
        secret_names: Vec::new(),
        clanker_name: "c".into(),
        scm: None,
        commit_author: Default::default(),
        agent_silence_secs: 300,
        traceparent: None,
    }
}

/// Claims and completes `jobs` queued jobs with `claimers` concurrent claimers.
pub async fn queue(backend: &str, target: DatabaseTarget, jobs: usize, claimers: usize) -> Result<()> {
    let store =
        Store::connect(&target, PoolSettings { max_connections: (claimers + 2) as u32, ..PoolSettings::default() })
            .await
            .context("connecting")?;
    store.migrate().await?;
    let input = serde_json::from_value(serde_json::json!({"name": "Queue bench", "max_concurrent_jobs": 100}))?;
    let project = store.create_project(NewProject::parse(input).map_err(|e| anyhow::anyhow!(e))?).await?;
    let clanker_input: ClankerInput = serde_json::from_value(
        serde_json::json!({"name": "bench", "agent": "command", "agent_settings": {"command": ["true"]}, "max_concurrent_jobs": 100}),
    )?;
    let clanker = store.create_clanker(NewClanker::parse(clanker_input).map_err(|e| anyhow::anyhow!(e))?).await?;
    for _ in 0..jobs {
        store
            .create_job(NewJob {
                id: JobId::new(),
                project_id: project.id,
                ticket_id: None,
                clanker_id: Some(clanker.id),
                spec: spec(),
                requested_by: None,
                request_id: None,
            })
            .await?;
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..claimers)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut idle_since = None;
                loop {
                    let t = Instant::now();
                    let Some(job) = store.claim_next_job("bench").await? else {
                        // On PostgreSQL a claim skips a project another claimer is
                        // claiming in at that moment: stop only once none is queued.
                        let queued = store.job_counts().await?.iter().any(|(s, n)| s == "queued" && *n > 0);
                        if queued {
                            let since = *idle_since.get_or_insert_with(Instant::now);
                            anyhow::ensure!(
                                since.elapsed() < Duration::from_secs(60),
                                "no claim for a minute while jobs are queued"
                            );
                            tokio::task::yield_now().await;
                            continue;
                        }
                        break;
                    };
                    idle_since = None;
                    store
                        .finish_job(job.id, Outcome::Completed { result: Default::default(), summary: "ok".into() })
                        .await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    if latencies.len() != jobs {
        bail!("claimed {} of {jobs} jobs", latencies.len());
    }
    Stats { requests: jobs, wall: started.elapsed(), latencies }.print(backend, "claim+complete", claimers);
    store.close().await;
    Ok(())
}

/// The worker image the fake cluster's registry holds (the bench's binary).
pub const KUBE_IMAGE: &str = "bench.example.com/viberglass-worker:bench";

/// The bench's repositories: readable by sandboxed workers (`VIBERGLASS_SANDBOX_PATHS`).
pub const REPOS: &str = "/var/tmp/viberglass-bench-repos";

/// Requests `runs` runs one after another against a running server and
/// measures, as the server's own timestamps record them, from the request
/// to the worker starting (the compute target's launch returned) and to the
/// worker's first call (its bootstrap, which marks the job started), on the
/// local target and, given `docker_image`, on Docker too, and with
/// `kubernetes` on the testkit's fake cluster.
pub async fn dispatch(
    client: &reqwest::Client,
    base: &str,
    runs: usize,
    docker_image: Option<&str>,
    kubernetes: bool,
) -> Result<()> {
    // Where the server's sandbox lets workers read (see `REPOS`).
    std::fs::create_dir_all(REPOS)?;
    let repo = tempfile::Builder::new().prefix("viberglass-bench-").tempdir_in(REPOS)?;

    let bare = repo.path().join("remote.git");
    let seed = repo.path().join("seed");
    std::fs::create_dir_all(&seed)?;
    let git = |dir: &std::path::Path, args: &[&str]| -> Result<()> {
        let status = std::process::Command::new("git")
            .args(["-c", "user.name=b", "-c", "user.email=b@example.com", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .status()?;
        if !status.success() {
            bail!("git {args:?} failed");
        }
        Ok(())
    };
    git(repo.path(), &["init", "-q", "--bare", bare.to_str().unwrap()])?;
    git(&seed, &["init", "-q"])?;
    std::fs::write(seed.join("README.md"), "bench\n")?;
    git(&seed, &["add", "-A"])?;
    git(&seed, &["commit", "-q", "-m", "init"])?;
    git(&seed, &["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"])?;

    let post = |path: String, body: serde_json::Value| post_json(client, base, path, body);
    post("/api/v1/projects".into(), serde_json::json!({"name": "Dispatch", "slug": "dispatch", "repository_url": format!("file://{}", bare.display()), "max_concurrent_jobs": 4, "planning_needs_approval": false})).await?;
    let ticket = post("/api/v1/projects/dispatch/tickets".into(), serde_json::json!({"title": "bench"})).await?;
    let ticket = ticket["id"].as_str().context("ticket id")?.to_owned();
    let mut targets = vec![("local", "bench-true", serde_json::json!({"compute": "local"}))];
    if let Some(image) = docker_image {
        // The clone fails in the container (the repository is a host path): only the way to the worker is timed.
        targets.push((
            "docker",
            "bench-docker",
            serde_json::json!({"compute": "docker", "compute_config": {"image": image, "network": "host"}}),
        ));
    }
    if kubernetes {
        targets.push((
            "kubernetes (fake cluster)",
            "bench-kube",
            serde_json::json!({"compute": "kubernetes", "compute_config": {"image": KUBE_IMAGE}}),
        ));
    }
    for (target, name, compute) in targets {
        let mut clanker = serde_json::json!({"shared": true, "name": name, "agent": "command",
            "agent_settings": {"command": ["true"]}, "max_concurrent_jobs": 4});
        for (k, v) in compute.as_object().context("compute")? {
            clanker[k] = v.clone();
        }
        post("/api/v1/clankers".into(), clanker).await?;
        let started = post(format!("/api/v1/clankers/{name}/start"), serde_json::json!({})).await?;
        if started["status"] != "active" {
            bail!("the {target} clanker did not start: {}", started["status_message"]);
        }
        dispatch_to(client, base, &ticket, target, name, runs).await?;
    }
    Ok(())
}

/// POSTs `body` to `path` and returns the JSON answer, or the error it gave.
async fn post_json(
    client: &reqwest::Client,
    base: &str,
    path: String,
    body: serde_json::Value,
) -> Result<serde_json::Value> {
    let url = format!("{base}{path}");
    let response = client.post(&url).json(&body).send().await?;
    if !response.status().is_success() {
        bail!("POST {url}: {}", response.text().await?);
    }
    Ok(response.json().await?)
}

/// The job once its `field` is set (within a minute).
async fn job_when(client: &reqwest::Client, base: &str, id: &str, field: &str) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job: serde_json::Value = client.get(format!("{base}/api/v1/jobs/{id}")).send().await?.json().await?;
        if !job[field].is_null() {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!("job {id} has no {field} after a minute: {job}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn dispatch_to(
    client: &reqwest::Client,
    base: &str,
    ticket: &str,
    target: &str,
    clanker: &str,
    runs: usize,
) -> Result<()> {
    let post = |path: String, body: serde_json::Value| post_json(client, base, path, body);
    let parse = |v: &serde_json::Value| {
        time::OffsetDateTime::parse(v.as_str().unwrap_or_default(), &time::format_description::well_known::Rfc3339)
    };

    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut contacts = Vec::new();
    let mut overheads = Vec::new();
    for _ in 0..runs {
        let job = post(
            format!("/api/v1/tickets/{ticket}/runs"),
            serde_json::json!({"phase": "research", "clanker": clanker}),
        )
        .await?;
        let id = job["id"].as_str().context("job id")?.to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        let latency = loop {
            let events: serde_json::Value =
                client.get(format!("{base}/api/v1/jobs/{id}/events")).send().await?.json().await?;
            let items = events["items"].as_array().cloned().unwrap_or_default();
            let queued = items.iter().find(|e| e["message"] == "queued");
            let launched =
                items.iter().find(|e| e["message"].as_str().is_some_and(|m| m.starts_with("worker started")));
            if let (Some(q), Some(l)) = (queued, launched) {
                break (parse(&l["created_at"])? - parse(&q["created_at"])?).unsigned_abs();
            }
            if Instant::now() > deadline {
                bail!("job {id} was not dispatched within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        latencies.push(latency);
        // The worker's first call: its bootstrap sets `started_at`.
        let job = job_when(client, base, &id, "started_at").await?;
        contacts.push((parse(&job["started_at"])? - parse(&job["queued_at"])?).unsigned_abs());
        // Each run to its end before the next, so every one starts on an idle server.
        job_when(client, base, &id, "finished_at").await?;
        if target == "local" {
            overheads.push(worker_overhead(client, base, &id).await?);
        }
    }
    Stats { requests: runs, wall: started.elapsed(), latencies }.print(target, "dispatch: request → worker started", 1);
    Stats { requests: runs, wall: started.elapsed(), latencies: contacts }.print(
        target,
        "dispatch: request → worker's first call",
        1,
    );
    if !overheads.is_empty() {
        Stats { requests: runs, wall: started.elapsed(), latencies: overheads }.print(target, "worker overhead", 1);
    }
    Ok(())
}

/// The worker's own time from bootstrap to starting the agent, clone excluded,
/// from the job's event timestamps.
async fn worker_overhead(client: &reqwest::Client, base: &str, id: &str) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events: serde_json::Value =
            client.get(format!("{base}/api/v1/jobs/{id}/events")).send().await?.json().await?;
        let items = events["items"].as_array().cloned().unwrap_or_default();
        let at = |prefix: &str| {
            items.iter().find(|e| e["message"].as_str().is_some_and(|m| m.starts_with(prefix))).and_then(|e| {
                time::OffsetDateTime::parse(e["created_at"].as_str()?, &time::format_description::well_known::Rfc3339)
                    .ok()
            })
        };
        if let (Some(boot), Some(clone), Some(cloned), Some(agent)) =
            (at("worker running"), at("cloning"), at("writing instruction files"), at("running the agent"))
        {
            return Ok(((agent - boot) - (cloned - clone)).unsigned_abs());
        }
        if Instant::now() > deadline {
            bail!("job {id} never reached its agent");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The outbox: `events` events written by `writers` concurrent writers (one
/// transaction each, as a change and its event are), then read by one
/// consumer in batches (lease, read, acknowledge), as the delivery loop does.
pub async fn outbox(backend: &str, target: DatabaseTarget, events: usize, writers: usize) -> Result<()> {
    let store =
        Store::connect(&target, PoolSettings { max_connections: (writers + 2) as u32, ..PoolSettings::default() })
            .await
            .context("connecting")?;
    store.migrate().await?;
    let started = Instant::now();
    let per_writer = events / writers;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_writer);
                for n in 0..per_writer {
                    let event = viberglass_domain::NewEvent::new(
                        viberglass_domain::EventType::TicketEdited,
                        serde_json::json!({"writer": w, "n": n}),
                    );
                    let t = Instant::now();
                    store.emit_event(&event).await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let written = latencies.len();
    Stats { requests: written, wall: started.elapsed(), latencies }.print(backend, "outbox write", writers);

    let lease = Duration::from_secs(15);
    let started = Instant::now();
    let mut consumed = 0;
    let mut latencies = Vec::new();
    while consumed < written {
        let t = Instant::now();
        let Some(cursor) = store.lease_consumer("bench", "bench-server", lease).await? else {
            bail!("the bench consumer's lease is held by someone else");
        };
        let batch = store.list_outbox(cursor, 200).await?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        store.advance_consumer("bench", "bench-server", last, batch.len() as i64, None, lease).await?;
        consumed += batch.len();
        latencies.push(t.elapsed());
        if started.elapsed() > Duration::from_secs(120) {
            bail!("consumed {consumed} of {written} events in 2 minutes");
        }
    }
    let wall = started.elapsed();
    println!(
        "{backend:<9} {:<15} {consumed:>8} {:>5} {:>10.0} {:>8} {:>8} {:>8}   (batches of up to 200; per-batch latency)",
        "outbox consume",
        1,
        consumed as f64 / wall.as_secs_f64(),
        "-",
        "-",
        latencies.iter().max().map_or(0, |d| d.as_millis()),
    );
    store.close().await;
    Ok(())
}

/// Queues a job (no clanker, so nothing runs it) on the project `slug` of a
/// running server's database and stores `lines` worker log lines for it, as
/// a worker would: the job a poll reads.
pub async fn job_with_events(target: &DatabaseTarget, slug: &str, lines: usize) -> Result<JobId> {
    let store = Store::connect(target, PoolSettings { max_connections: 2, ..PoolSettings::default() })
        .await
        .context("connecting to the server's database")?;
    let slug = viberglass_domain::ProjectSlug::parse(slug).map_err(|e| anyhow::anyhow!(e))?;
    let project = store.get_project_by_slug(&slug).await?;
    let job = store
        .create_job(NewJob {
            id: JobId::new(),
            project_id: project.id,
            ticket_id: None,
            clanker_id: None,
            spec: spec(),
            requested_by: None,
            request_id: None,
        })
        .await?;
    let events: Vec<_> = (0..lines)
        .map(|i| viberglass_domain::NewJobEvent {
            seq: i as u64 + 1,
            kind: viberglass_domain::EventKind::Log,
            level: viberglass_domain::LogLevel::Info,
            message: format!("[agent] step {i}: reading src/module_{i}.rs and running the tests"),
            data: None,
        })
        .collect();
    store.append_worker_events(job.id, &events).await?;
    store.close().await;
    Ok(job.id)
}
