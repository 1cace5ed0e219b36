//! ECS Fargate clankers against moto's server (ECS and EC2; installed by
//! scripts/test): Start checks the cluster and registers the task definition
//! once per content; a run is a Fargate task with the job's overrides, and
//! cancel stops it.

use std::time::Duration;

use serde_json::{Value, json};
use viberglass_testkit::aws_proxy::AwsProxy;
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::moto::Moto;
use viberglass_testkit::{TestApp, TestBackend};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");

/// A server whose ECS calls go through `proxy` to moto.
async fn app(moto: &Moto, proxy: &AwsProxy) -> TestApp {
    TestApp::builder(TestBackend::Sqlite)
        .fast_engine(BINARY)
        .aws(moto)
        .env("AWS_ENDPOINT_URL_ECS", &proxy.url())
        .spawn()
        .await
}

/// A cluster, and a VPC (with DNS hostnames, as moto's RunTask needs) with a subnet and a security group.
fn network(moto: &Moto) -> (String, String) {
    let ids = moto.boto3(
        "ecs = client('ecs'); ec2 = client('ec2')\n\
         ecs.create_cluster(clusterName='workers')\n\
         vpc = ec2.create_vpc(CidrBlock='10.0.0.0/16')['Vpc']['VpcId']\n\
         ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={'Value': True})\n\
         subnet = ec2.create_subnet(VpcId=vpc, CidrBlock='10.0.1.0/24')['Subnet']['SubnetId']\n\
         sg = ec2.create_security_group(GroupName='workers', Description='w', VpcId=vpc)['GroupId']\n\
         print(subnet, sg)",
    );
    let (subnet, sg) = ids.split_once(' ').expect("two ids");
    (subnet.to_owned(), sg.to_owned())
}

fn compute(subnet: &str, sg: &str, extra: Value) -> Value {
    let mut config = json!({"cluster": "workers", "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/viberglass-worker:1",
                            "subnets": [subnet], "security_groups": [sg],
                            "execution_role_arn": "arn:aws:iam::123456789012:role/viberglass-execution"});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

/// A project, a started ECS command clanker `fargate` running `command`, and a research run of a ticket: its job id.
async fn research_run(
    moto: &Moto,
    proxy: &AwsProxy,
    compute: Value,
    command: &[&str],
) -> (TestApp, ServedRepo, String) {
    let app = app(moto, proxy).await;
    let repo = ServedRepo::with_files(&[("README.md", "x")]).await;
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "planning_needs_approval": false})).await;
    app.post_json(
        "/api/v1/clankers",
        &json!({"shared": true, "name": "Fargate", "agent": "command", "compute": "ecs",
                "compute_config": compute, "agent_settings": {"command": command}}),
    )
    .await;
    let started: Value = app.post_json("/api/v1/clankers/fargate/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "active", "{started}");
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    let id = app.run_phase(ticket["id"].as_str().unwrap(), "fargate", "research").await;
    (app, repo, id)
}

fn families(moto: &Moto) -> Vec<String> {
    let listed = moto.boto3("print(json.dumps(client('ecs').list_task_definitions()['taskDefinitionArns']))");
    serde_json::from_str(&listed).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_registers_the_task_definition_once_and_again_only_when_it_changes() {
    let Some(moto) = Moto::start() else { return };
    let (subnet, sg) = network(&moto);
    let proxy = AwsProxy::start(&moto.endpoint).await;
    let app = app(&moto, &proxy).await;
    let created = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": true, "name": "Fargate", "agent": "command", "compute": "ecs",
                    "compute_config": compute(&subnet, &sg, json!({})), "agent_settings": {"command": ["true"]}}),
        )
        .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let started: Value = app.post_json("/api/v1/clankers/fargate/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "active", "{started}");
    assert!(started["status_message"].as_str().unwrap().contains("registered now"), "{started}");
    let again: Value = app.post_json("/api/v1/clankers/fargate/start", &json!({})).await.json().await.unwrap();
    assert_eq!(again["status"], "active", "{again}");
    assert!(again["status_message"].as_str().unwrap().contains("unchanged"), "{again}");
    let first = families(&moto);
    assert_eq!(first.len(), 1, "Start twice adds no revision: {first:?}");
    assert!(first[0].ends_with(":1"), "{first:?}");

    // A pair Fargate does not offer is refused when saved, naming the valid ones.
    let refused = app
        .patch_json(
            "/api/v1/clankers/fargate",
            &json!({"compute_config": compute(&subnet, &sg, json!({"cpu": 1024, "memory": 1024}))}),
        )
        .await;
    // Sent without `compute`, it is checked against the clanker's target: a 422 naming the field.
    assert_eq!(refused.status(), 422);
    let text = refused.text().await.unwrap();
    assert!(text.contains("does_not_fit") && text.contains("compute_config"), "{text}");
    assert!(text.contains("with 1024 CPU units the memory is 2048 to 8192 in steps of 1024 MiB"), "{text}");

    // A change registers the definition it describes (re-checked at once, the clanker being active).
    let moved: Value = app
        .patch_json(
            "/api/v1/clankers/fargate",
            &json!({"compute_config": compute(&subnet, &sg, json!({"cpu": 2048, "memory": 4096}))}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["status"], "active", "{moved}");
    assert!(moved["status_message"].as_str().unwrap().contains("2048 CPU units, 4096 MiB"), "{moved}");
    assert_eq!(families(&moto).len(), 2);

    // A cluster that does not exist is named.
    let missing: Value = app
        .patch_json(
            "/api/v1/clankers/fargate",
            &json!({"compute_config": compute(&subnet, &sg, json!({"cluster": "gone"}))}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(missing["status"], "failed", "{missing}");
    assert!(missing["status_message"].as_str().unwrap().contains("the ECS cluster `gone` does not exist"), "{missing}");

    // The server's role without an action it needs: named, with the fix and the request id; after the fix, Start works.
    proxy.deny("RegisterTaskDefinition");
    let denied: Value = app
        .patch_json(
            "/api/v1/clankers/fargate",
            &json!({"compute_config": compute(&subnet, &sg, json!({"cpu": 512, "memory": 2048}))}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(denied["status"], "failed", "{denied}");
    let message = denied["status_message"].as_str().unwrap();
    assert!(
        message.contains("the server's AWS role lacks `ecs:RegisterTaskDefinition`: add it to the role")
            && message.contains("request id"),
        "{message}"
    );
    proxy.allow("RegisterTaskDefinition");
    proxy.deny("DescribeTaskDefinition");
    let started: Value = app.post_json("/api/v1/clankers/fargate/start", &json!({})).await.json().await.unwrap();
    assert!(started["status_message"].as_str().unwrap().contains("lacks `ecs:DescribeTaskDefinition`"), "{started}");
    proxy.allow("DescribeTaskDefinition");
    let started: Value = app.post_json("/api/v1/clankers/fargate/start", &json!({})).await.json().await.unwrap();
    assert_eq!(started["status"], "active", "{started}");
    let registered = proxy.actions().iter().filter(|a| *a == "RegisterTaskDefinition").count();
    // One per distinct definition (three), plus the refused one; none for a Start of an unchanged one.
    assert_eq!(registered, 4, "{:?}", proxy.actions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_a_fargate_task_with_the_jobs_overrides_and_cancel_stops_it() {
    let Some(moto) = Moto::start() else { return };
    let (subnet, sg) = network(&moto);
    // Tasks stay RUNNING (moto moves them on a step per DescribeTasks otherwise).
    moto.set_transition("ecs::task", 100_000);
    let proxy = AwsProxy::start(&moto.endpoint).await;
    let (app, _repo, id) = research_run(&moto, &proxy, compute(&subnet, &sg, json!({})), &["true"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        let job: Value = app.get(&format!("/api/v1/jobs/{id}")).await.json().await.unwrap();
        if job["compute_ref"].is_string() {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "the task never started: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let compute_ref = job["compute_ref"].as_str().unwrap();
    assert!(compute_ref.starts_with("ecs:") && compute_ref.contains(":workers/"), "{job}");
    let task = compute_ref.rsplit('/').next().unwrap();
    let described = moto.boto3(&format!(
        "t = client('ecs').describe_tasks(cluster='workers', tasks=['{task}'])['tasks'][0]\n\
         o = t['overrides']['containerOverrides'][0]\n\
         print(json.dumps({{'status': t['lastStatus'], 'command': o['command'], 'env': [e['name'] for e in o['environment']]}}))"
    ));
    let described: Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["status"], "RUNNING", "{described}");
    assert_eq!(described["command"], json!(["worker", "--job", id]), "{described}");
    assert!(described["env"].as_array().unwrap().contains(&json!("VIBERGLASS_SERVER_URL")), "{described}");

    let events = app.job_events(&id).await;
    assert!(
        events.contains(&format!(
            "CloudWatch Logs group /viberglass/workers in us-east-1, stream viberglass/worker/{task}"
        )),
        "{events}"
    );

    let cancelled = app.post_json(&format!("/api/v1/jobs/{id}/cancel"), &json!({})).await;
    assert!(cancelled.status().is_success(), "{}", cancelled.text().await.unwrap());
    let stopped = moto.boto3(&format!(
        "t = client('ecs').describe_tasks(cluster='workers', tasks=['{task}'])['tasks'][0]\n\
         print(t['desiredStatus'], '|', t.get('stoppedReason', ''))"
    ));
    assert!(stopped.starts_with("STOPPED") && stopped.contains("stopped by Viberglass"), "{stopped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_ecs_was_asked_for_runs_the_job_to_completion_in_the_worker_image() {
    // ECS itself cannot run here: its task runs on the real Docker engine, as Fargate would run it, from the
    // image, command and environment the server gave RunTask.
    let Ok(image) = std::env::var("VIBERGLASS_TEST_WORKER_IMAGE") else {
        assert!(
            std::env::var("CI").is_err(),
            "VIBERGLASS_TEST_WORKER_IMAGE is needed under CI: scripts/test builds it"
        );
        return eprintln!("note: no worker image; skipping (scripts/test builds it)");
    };
    let Some(moto) = Moto::start() else { return };
    let (subnet, sg) = network(&moto);
    moto.set_transition("ecs::task", 100_000);
    let proxy = AwsProxy::start(&moto.endpoint).await;
    let script =
        "echo on-fargate uid=$(id -u) token=${VIBERGLASS_JOB_TOKEN:-none}; printf '# Findings\\n' > RESEARCH.md";
    let config = compute(&subnet, &sg, json!({"image": image}));
    let (app, _repo, id) = research_run(&moto, &proxy, config, &["sh", "-c", script]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let task = loop {
        let job: Value = app.get(&format!("/api/v1/jobs/{id}")).await.json().await.unwrap();
        if let Some(compute_ref) = job["compute_ref"].as_str() {
            break compute_ref.rsplit('/').next().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "the task never started: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let described = moto.boto3(&format!(
        "t = client('ecs').describe_tasks(cluster='workers', tasks=['{task}'])['tasks'][0]\n\
         d = client('ecs').describe_task_definition(taskDefinition=t['taskDefinitionArn'])['taskDefinition']\n\
         o = t['overrides']['containerOverrides'][0]\n\
         print(json.dumps({{'image': d['containerDefinitions'][0]['image'], 'command': o['command'],\n\
                           'env': {{e['name']: e['value'] for e in o['environment']}}}}))"
    ));
    let described: Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["image"], image.as_str());
    let name = format!("viberglass-ecs-{task}");
    let mut run = std::process::Command::new("docker");
    run.args(["run", "--rm", "--name", &name, "--network", "host", "--label", "io.viberglass.test=ecs"]);
    for (key, value) in described["env"].as_object().unwrap() {
        run.arg("-e").arg(format!("{key}={}", value.as_str().unwrap()));
    }
    run.arg(&image).args(described["command"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()));
    let output = tokio::task::spawn_blocking(move || run.output().expect("docker runs")).await.unwrap();
    let done = app.wait_for_job(&id, &["completed", "failed"], Duration::from_secs(60)).await;
    let events = app.job_events(&id).await;
    assert_eq!(done["status"], "completed", "{done}\n{events}\n{}", String::from_utf8_lossy(&output.stderr));
    // The worker ran as the image's user, and its agent never saw the token the task was given.
    assert!(events.contains("on-fargate uid=10001 token=none"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_stops_on_its_own_fails_its_job_with_what_ecs_said() {
    let Some(moto) = Moto::start() else { return };
    let (subnet, sg) = network(&moto);
    // moto's default: every DescribeTasks moves a task a step on, RUNNING → … → STOPPED, its container exiting 0.
    let proxy = AwsProxy::start(&moto.endpoint).await;
    let (app, _repo, id) = research_run(&moto, &proxy, compute(&subnet, &sg, json!({})), &["true"]).await;
    let failed = app.wait_for_job(&id, &["failed"], Duration::from_secs(30)).await;
    assert_eq!(failed["failure"]["code"], "worker_exited_at_start", "{failed}");
    let message = failed["failure"]["message"].as_str().unwrap();
    assert!(
        message.contains("the task's worker exited with code 0")
            && message.contains("CloudWatch Logs group /viberglass/workers, stream viberglass/worker/"),
        "{message}"
    );
}
