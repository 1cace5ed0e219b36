//! Kubernetes clankers against the testkit's fake API server (no API server
//! can be installed here): the server's kube-rs client talks HTTP to it as to
//! a real cluster, with a kubeconfig and a bearer token, and the fake's
//! node really runs each Job's init container and worker as local processes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use viberglass_testkit::fake_forge::{ALL, FakeForge};
use viberglass_testkit::fake_kube::{FakeImage, FakeKube};
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::model::{MockModel, Step};
use viberglass_testkit::{TestApp, TestBackend};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");
const IMAGE: &str = "registry.example.com/viberglass-worker:test";

/// A fake cluster whose registry has the worker image (this build's binary, with the agent CLIs on its PATH).
async fn cluster() -> (FakeKube, tempfile::TempDir) {
    let kube = FakeKube::start().await;
    let mut path = std::env::var("PATH").unwrap_or_default();
    if let Ok(cli) = std::env::var("VIBERGLASS_TEST_CLI_DIR") {
        path = format!("{cli}:{path}");
    }
    kube.add_image(IMAGE, FakeImage { entrypoint: BINARY.into(), env: vec![("PATH".into(), path)], pull_secret: None });
    let dir = tempfile::tempdir().unwrap();
    (kube, dir)
}

fn app(kube: &FakeKube, dir: &tempfile::TempDir) -> viberglass_testkit::app::TestAppBuilder {
    TestApp::builder(TestBackend::Sqlite)
        .fast_engine(BINARY)
        .env("VIBERGLASS_HEARTBEAT_GRACE_SECS", "30")
        .env("VIBERGLASS_KUBECONFIG", &kube.kubeconfig(dir.path()).display().to_string())
        .env("VIBERGLASS_KUBERNETES_UNSCHEDULABLE_GRACE_SECS", "0")
        .env("VIBERGLASS_KUBERNETES_NAMESPACES", "viberglass,ci-workers")
}

async fn create_clanker(app: &TestApp, name: &str, compute: Value, command: &str) {
    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": name, "agent": "command", "compute": "kubernetes",
                    "compute_config": compute, "agent_settings": {"command": ["sh", "-c", command]}}),
        )
        .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
}

async fn start(app: &TestApp, slug: &str) -> Value {
    app.post_json(&format!("/api/v1/clankers/{slug}/start"), &json!({})).await.json().await.unwrap()
}

/// A project on a local repository and a started command clanker `boxed` running `script`; the ticket's id.
async fn setup(app: &TestApp, repo: &ServedRepo, script: &str, compute: Value) -> String {
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "planning_needs_approval": false})).await;
    create_clanker(app, "Boxed", compute, script).await;
    let started = start(app, "boxed").await;
    assert_eq!(started["status"], "active", "{started}");
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    ticket["id"].as_str().unwrap().to_owned()
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn of_job(objects: Vec<Value>, job: &str) -> Vec<Value> {
    objects.into_iter().filter(|o| o["metadata"]["labels"]["io.viberglass/job"] == job).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_clankers_are_off_until_the_operator_names_namespaces() {
    let (kube, dir) = cluster().await;
    let app = TestApp::builder(TestBackend::Sqlite)
        .env("VIBERGLASS_KUBECONFIG", &kube.kubeconfig(dir.path()).display().to_string())
        .spawn()
        .await;
    create_clanker(&app, "Boxed", json!({"image": IMAGE}), "true").await;
    let started = start(&app, "boxed").await;
    assert_eq!(started["status"], "failed", "{started}");
    let message = started["status_message"].as_str().unwrap();
    assert!(
        message.contains("Kubernetes clankers are off") && message.contains("VIBERGLASS_KUBERNETES_NAMESPACES"),
        "{message}"
    );
    assert!(kube.requests().is_empty(), "the cluster was not asked: {:?}", kube.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_naming_the_missing_rbac_rule() {
    let (kube, dir) = cluster().await;
    kube.refuse("get", "", "pods/log");
    kube.refuse("delete", "batch", "jobs");
    let app = app(&kube, &dir).spawn().await;
    create_clanker(&app, "Boxed", json!({"image": IMAGE}), "true").await;
    let started = start(&app, "boxed").await;
    assert_eq!(started["status"], "failed", "{started}");
    let message = started["status_message"].as_str().unwrap();
    assert!(
        message.contains(r#"apiGroups: [""], resources: ["pods/log"], verbs: ["get"]"#)
            && message.contains(r#"apiGroups: ["batch"], resources: ["jobs"], verbs: ["delete"]"#)
            && message.contains("namespace viberglass"),
        "{message}"
    );
    // Nothing was created on the cluster's side.
    assert!(kube.jobs("viberglass").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_naming_a_missing_namespace_and_a_missing_image() {
    let (kube, dir) = cluster().await;
    let app = app(&kube, &dir).spawn().await;
    create_clanker(&app, "Elsewhere", json!({"image": IMAGE, "namespace": "ci-workers"}), "true").await;
    let started = start(&app, "elsewhere").await;
    assert_eq!(started["status"], "failed", "{started}");
    let message = started["status_message"].as_str().unwrap();
    assert!(
        message.contains("namespace `ci-workers` does not exist") && message.contains("kubectl create namespace"),
        "{message}"
    );

    // A namespace the operator did not give workers is refused before the cluster is asked.
    let changed = app
        .patch_json(
            "/api/v1/clankers/elsewhere",
            &json!({"compute_config": {"image": IMAGE, "namespace": "kube-system"}}),
        )
        .await;
    assert_eq!(changed.status(), 200);
    let started = start(&app, "elsewhere").await;
    let message = started["status_message"].as_str().unwrap();
    assert!(message.contains("namespace `kube-system` is not one this server runs workers in"), "{message}");

    // Once the namespace exists, Start goes on to the self-check; an image the registry lacks fails it by name.
    kube.add_namespace("ci-workers");
    let changed = app
        .patch_json(
            "/api/v1/clankers/elsewhere",
            &json!({"compute_config": {"image": "registry.example.com/nope:1", "namespace": "ci-workers"}}),
        )
        .await;
    assert_eq!(changed.status(), 200, "{}", changed.text().await.unwrap());
    let started = start(&app, "elsewhere").await;
    assert_eq!(started["status"], "failed", "{started}");
    let message = started["status_message"].as_str().unwrap();
    assert!(
        message.contains("cannot pull the worker image `registry.example.com/nope:1`")
            && message.contains("compute_config.image_pull_secret"),
        "{message}"
    );
    // The self-check's Job was removed.
    until("the self-check Job is still there", Duration::from_secs(5), || kube.jobs("ci-workers").is_empty()).await;

    // A worker that asks for more than any node has is named unschedulable, with what it asked for.
    let changed = app
        .patch_json(
            "/api/v1/clankers/elsewhere",
            &json!({"compute_config": {"image": IMAGE, "namespace": "ci-workers", "memory_mb": 65536}}),
        )
        .await;
    assert_eq!(changed.status(), 200);
    let started = start(&app, "elsewhere").await;
    assert_eq!(started["status"], "failed", "{started}");
    let message = started["status_message"].as_str().unwrap();
    assert!(
        message.contains("no node can run the worker")
            && message.contains("65536 MiB")
            && message.contains("Insufficient memory"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_as_a_kubernetes_job_and_its_secret_is_gone_after_the_run() {
    let (kube, dir) = cluster().await;
    let app = app(&kube, &dir).spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "Shop\n")]).await;
    let script = "echo \"token-file=$(ls -a .. | grep -c viberglass-token)\"; echo \"sa=$(ls /var/run/secrets 2>/dev/null | wc -l)\"; \
                  printf '# Findings\\n' > RESEARCH.md";
    let ticket = setup(&app, &repo, script, json!({"image": IMAGE, "cpus": 0.5, "memory_mb": 256})).await;
    // Start is idempotent: again, the same answer, and its self-check Jobs are gone.
    assert_eq!(start(&app, "boxed").await["status"], "active");
    assert!(kube.jobs("viberglass").is_empty() && kube.secrets("viberglass").is_empty());
    let id = app.run_phase(&ticket, "boxed", "research").await;
    let done = app.wait_for_job(&id, &["completed", "failed"], Duration::from_secs(60)).await;
    let events = app.job_events(&id).await;
    assert_eq!(done["status"], "completed", "{done}\n{events}");
    assert!(done["compute_ref"].as_str().unwrap().starts_with("kubernetes:"), "{done}");
    // The worker deleted the token file before its agent ran.
    assert!(events.contains("token-file=0"), "{events}");

    let jobs = kube.requests();
    assert!(jobs.iter().any(|r| r == "POST /apis/batch/v1/namespaces/viberglass/jobs"), "{jobs:?}");
    // The Job as the cluster got it: the limits, no retries, a deadline, a TTL, and no credentials for the pod.
    let secret_name = {
        let job = of_job(kube.jobs("viberglass"), &id);
        assert_eq!(job.len(), 1, "one Job for the run");
        let spec = &job[0]["spec"];
        assert_eq!(spec["backoffLimit"], 0);
        assert!(spec["activeDeadlineSeconds"].as_i64().unwrap() > 0);
        assert_eq!(spec["ttlSecondsAfterFinished"], 3600);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let worker = &pod["containers"][0];
        assert_eq!(
            worker["resources"]["limits"],
            json!({"cpu": "500m", "memory": "256Mi", "ephemeral-storage": "10240Mi"})
        );
        assert_eq!(pod["volumes"][0]["emptyDir"]["sizeLimit"], "10240Mi");
        assert!(worker["env"].as_array().unwrap().iter().all(|e| e["name"] != "VIBERGLASS_JOB_TOKEN"));
        assert!(worker["volumeMounts"].as_array().unwrap().iter().all(|m| m["name"] != "token"));
        job[0]["metadata"]["name"].as_str().unwrap().to_owned()
    };
    // Once the job has ended, the engine deletes the run's Job and its token Secret.
    until("the run's Secret is still there", Duration::from_secs(15), || {
        of_job(kube.secrets("viberglass"), &id).is_empty()
    })
    .await;
    until("the run's Job is still there", Duration::from_secs(15), || of_job(kube.jobs("viberglass"), &id).is_empty())
        .await;
    assert!(kube.pods("viberglass").is_empty());
    assert!(kube.requests().contains(&format!("DELETE /api/v1/namespaces/viberglass/secrets/{secret_name}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_eviction_and_a_vanished_image_fail_jobs_with_the_mapped_message() {
    let (kube, dir) = cluster().await;
    let app = app(&kube, &dir).spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "Shop\n")]).await;
    let ticket = setup(&app, &repo, "sleep 60", json!({"image": IMAGE, "memory_mb": 512})).await;

    let id = app.run_phase(&ticket, "boxed", "research").await;
    app.wait_for_agent(&id).await;
    assert_eq!(kube.oom_kill(&format!("io.viberglass/job={id}")), 1);
    let failed = app.wait_for_job(&id, &["failed"], Duration::from_secs(20)).await;
    let message = failed["failure"]["message"].as_str().unwrap();
    assert_eq!(failed["failure"]["code"], "worker_out_of_memory", "{failed}");
    assert!(message.contains("out of memory (its limit is 512Mi)") && message.contains("memory_mb"), "{message}");

    let id = app.run_phase(&ticket, "boxed", "research").await;
    app.wait_for_agent(&id).await;
    assert_eq!(kube.evict(&format!("io.viberglass/job={id}")), 1);
    let failed = app.wait_for_job(&id, &["failed"], Duration::from_secs(20)).await;
    assert_eq!(failed["failure"]["code"], "worker_evicted", "{failed}");
    assert!(
        failed["failure"]["message"].as_str().unwrap().contains("The node was low on resource: memory"),
        "{failed}"
    );

    // The registry lost the image after Start: the run fails naming it, as never started.
    kube.add_image(
        IMAGE,
        FakeImage { entrypoint: "/nonexistent".into(), env: vec![], pull_secret: Some("regcred".into()) },
    );
    let id = app.run_phase(&ticket, "boxed", "research").await;
    let failed = app.wait_for_job(&id, &["failed"], Duration::from_secs(20)).await;
    assert_eq!(failed["failure"]["code"], "worker_image_pull_failed", "{failed}");
    assert_eq!(failed["failure"]["layer"], "dispatch", "{failed}");
    let message = failed["failure"]["message"].as_str().unwrap();
    assert!(message.contains("the worker never started") && message.contains(IMAGE), "{message}");
    // Every run's Job and Secret is removed once its job has failed.
    until("a failed run's Job is still there", Duration::from_secs(15), || kube.jobs("viberglass").is_empty()).await;
    assert!(kube.secrets("viberglass").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_deletes_the_runs_job_and_secret() {
    let (kube, dir) = cluster().await;
    let app = app(&kube, &dir).spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "Shop\n")]).await;
    let ticket = setup(&app, &repo, "sleep 60", json!({"image": IMAGE})).await;
    let id = app.run_phase(&ticket, "boxed", "research").await;
    app.wait_for_agent(&id).await;
    // The token's Secret goes once the worker has bootstrapped, while its Job runs on.
    until("the running job's token Secret is still there", Duration::from_secs(5), || {
        of_job(kube.secrets("viberglass"), &id).is_empty()
    })
    .await;
    assert_eq!(of_job(kube.jobs("viberglass"), &id).len(), 1);
    // A pod someone else labelled as this run's (newer, and evicted) is not taken for its worker.
    let run = of_job(kube.jobs("viberglass"), &id)[0]["metadata"]["name"].as_str().unwrap().to_owned();
    kube.add_pod(
        "viberglass",
        json!({"kind": "Pod", "apiVersion": "v1",
               "metadata": {"name": format!("{run}-decoy"), "labels": {"io.viberglass/run": run, "io.viberglass/job": id}},
               "spec": {"containers": [{"name": "worker", "image": IMAGE}]},
               "status": {"phase": "Failed", "reason": "Evicted", "message": "decoy"}}),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job: Value = app.get(&format!("/api/v1/jobs/{id}")).await.json().await.unwrap();
    assert_eq!(job["status"], "active", "{job}");
    let cancelled = app.post_json(&format!("/api/v1/jobs/{id}/cancel"), &json!({})).await;
    assert!(cancelled.status().is_success(), "{}", cancelled.text().await.unwrap());
    until("the cancelled run's Job is still there", Duration::from_secs(5), || {
        of_job(kube.jobs("viberglass"), &id).is_empty()
    })
    .await;
    assert!(of_job(kube.secrets("viberglass"), &id).is_empty());
    // The run's pod went with its Job; the decoy, nobody's to delete here, stays.
    let left: Vec<Value> = kube.pods("viberglass");
    assert!(left.iter().all(|p| p["metadata"]["name"].as_str().unwrap().ends_with("-decoy")), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_on_kubernetes_goes_from_research_to_a_pull_request() {
    if std::env::var("VIBERGLASS_TEST_CLI_DIR").is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "VIBERGLASS_TEST_CLI_DIR is needed under CI: scripts/test installs the CLIs"
        );
        return eprintln!("note: no agent CLIs; skipping (scripts/test installs them)");
    }
    let (kube, dir) = cluster().await;
    let model = MockModel::start(vec![
        Step::Run("printf '# Findings\\n\\nThe readme has no title.\\n' > RESEARCH.md".into()),
        Step::Text("Wrote RESEARCH.md.".into()),
        Step::Run("printf '# Plan\\n1. Add a title to README.md\\n' > PLAN.md".into()),
        Step::Text("Wrote PLAN.md.".into()),
        Step::Run(
            "printf '# Shop\\nFixed.\\n' > README.md && printf 'Give the readme a title\\n' > PR_TITLE.md".into(),
        ),
        Step::Text("Changed README.md.".into()),
    ])
    .await;
    let forge = FakeForge::start().await;
    forge.add_repo("acme/shop", &[("README.md", "Shop\n")]);
    forge.add_token("forge-token-kube-1", "shop-bot", ALL);
    let app = app(&kube, &dir)
        .env("VG_MODEL_KEY", "sk-mock-key-0123456789")
        .env("VG_FORGE_TOKEN", "forge-token-kube-1")
        .spawn()
        .await;
    app.shop_on_forge(&forge).await;
    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Claude", "agent": "claude-code", "secrets": ["ANTHROPIC_API_KEY"],
                    "compute": "kubernetes", "compute_config": {"image": IMAGE, "memory_mb": 2048},
                    "agent_settings": {"base_url": model.anthropic_url(), "model": "claude-test-model"}}),
        )
        .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let started = start(&app, "claude").await;
    assert_eq!(started["status"], "active", "{started}");
    assert!(started["status_message"].as_str().unwrap().contains("namespace viberglass"), "{started}");
    let ticket = app.create_ticket("shop", json!({"title": "Readme title", "description": "Add one"})).await;
    let ticket = ticket["id"].as_str().unwrap().to_owned();

    let research = app.run_phase(&ticket, "claude", "research").await;
    let done = app.wait_for_job(&research, &["completed", "failed"], Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", app.job_events(&research).await);
    let mut jobs = vec![research];
    for phase in ["research", "planning"] {
        let next = app.approve_and_continue(&ticket, phase, "claude").await;
        let done = app.wait_for_job(&next, &["completed", "failed"], Duration::from_secs(120)).await;
        assert_eq!(done["status"], "completed", "{done}\n{}", app.job_events(&next).await);
        jobs.push(next);
    }
    let pulls = forge.pulls("acme/shop");
    assert_eq!(pulls.len(), 1, "one pull request");
    assert_eq!(pulls[0].title, "Give the readme a title");
    // The key reached the model from the worker's proxy; the agent had only a placeholder.
    assert!(model.requests().iter().all(|r| r.header("x-api-key") == Some("sk-mock-key-0123456789")));
    for job in &jobs {
        until("a run's Secret is still there", Duration::from_secs(15), || {
            of_job(kube.secrets("viberglass"), job).is_empty()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_a_clanker_from_local_to_kubernetes_keeps_its_id_secrets_and_history() {
    let (kube, dir) = cluster().await;
    let app = app(&kube, &dir).env("VG_SOME_SECRET", "value-123").spawn().await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    app.post_json("/api/v1/secrets", &json!({"name": "SOME_SECRET", "reference": "VG_SOME_SECRET"})).await;
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "planning_needs_approval": false})).await;
    let created: Value = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Mover", "agent": "command", "secrets": ["SOME_SECRET"],
                    "agent_settings": {"command": ["sh", "-c", "echo secret-length=${#SOME_SECRET}; echo changed >> README.md"]}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(start(&app, "mover").await["status"], "active");
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    let ticket = ticket["id"].as_str().unwrap().to_owned();
    let local = app.run_phase(&ticket, "mover", "execution").await;
    assert_eq!(
        app.wait_for_job(&local, &["completed", "failed"], Duration::from_secs(60)).await["status"],
        "completed"
    );

    let moved: Value = app
        .patch_json("/api/v1/clankers/mover", &json!({"compute": "kubernetes", "compute_config": {"image": IMAGE}}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["id"], created["id"]);
    assert_eq!(moved["secrets"], json!(["SOME_SECRET"]));
    assert_eq!(moved["status"], "active", "re-checked on the new target: {moved}");
    let podded = app.run_phase(&ticket, "mover", "execution").await;
    let done = app.wait_for_job(&podded, &["completed", "failed"], Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", app.job_events(&podded).await);
    assert_eq!(done["compute_kind"], "kubernetes", "{done}");
    assert!(app.job_events(&podded).await.contains("secret-length=9"), "the clanker's secret reached the pod's agent");
    let old: Value = app.get(&format!("/api/v1/jobs/{local}")).await.json().await.unwrap();
    assert_eq!(old["compute_kind"], "local", "the earlier run's history stays as it ran: {old}");
}
