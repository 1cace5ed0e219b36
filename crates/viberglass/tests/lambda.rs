//! Lambda clankers against moto's server (through the testkit's AWS proxy,
//! which records the invocations and refuses chosen actions), and the
//! worker's Lambda mode: the real `viberglass worker --lambda` serving the
//! invocation the server made, through the testkit's Lambda Runtime API.

use std::time::Duration;

use serde_json::{Value, json};
use viberglass_testkit::aws_proxy::AwsProxy;
use viberglass_testkit::forge::ServedRepo;
use viberglass_testkit::lambda_runtime::FakeLambdaRuntime;
use viberglass_testkit::moto::Moto;
use viberglass_testkit::{TestApp, TestBackend};

const BINARY: &str = env!("CARGO_BIN_EXE_viberglass");
const IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/viberglass-worker:1";

async fn app(moto: &Moto, proxy: &AwsProxy) -> TestApp {
    TestApp::builder(TestBackend::Sqlite)
        .fast_engine(BINARY)
        .aws(moto)
        .env("AWS_ENDPOINT_URL_LAMBDA", &proxy.url())
        .env("AWS_ENDPOINT_URL_ECS", &proxy.url())
        .spawn()
        .await
}

/// The functions' execution role, in moto's IAM.
fn role(moto: &Moto) -> String {
    moto.lambda_without_docker();
    moto.boto3(
        "trust = {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Principal': {'Service': 'lambda.amazonaws.com'}, 'Action': 'sts:AssumeRole'}]}\n\
         print(client('iam').create_role(RoleName='viberglass-worker', AssumeRolePolicyDocument=json.dumps(trust))['Role']['Arn'])",
    )
}

fn compute(role: &str, extra: Value) -> Value {
    let mut config = json!({"function_name": "viberglass-worker", "image": IMAGE, "role_arn": role});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

async fn clanker(app: &TestApp, body: Value) -> Value {
    let created = app.post_json("/api/v1/clankers", &body).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    created.json().await.unwrap()
}

async fn start(app: &TestApp, slug: &str) -> Value {
    app.post_json(&format!("/api/v1/clankers/{slug}/start"), &json!({})).await.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_creates_the_function_then_updates_only_what_differs() {
    let Some(moto) = Moto::start() else { return };
    let role = role(&moto);
    let proxy = AwsProxy::start(&moto.endpoint).await;
    let app = app(&moto, &proxy).await;
    clanker(
        &app,
        json!({"shared": true, "name": "Lambda", "agent": "command", "compute": "lambda",
                         "compute_config": compute(&role, json!({})), "agent_settings": {"command": ["true"]}}),
    )
    .await;
    let started = start(&app, "lambda").await;
    assert_eq!(started["status"], "active", "{started}");
    let message = started["status_message"].as_str().unwrap();
    assert!(message.contains("created") && message.contains("/aws/lambda/viberglass-worker"), "{message}");
    let again = start(&app, "lambda").await;
    assert!(again["status_message"].as_str().unwrap().contains("unchanged"), "{again}");
    let updates = |proxy: &AwsProxy| {
        proxy
            .actions()
            .iter()
            .filter(|a| a.starts_with("Update") || *a == "CreateFunction")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(updates(&proxy), ["CreateFunction"], "Start twice changes nothing the second time");

    // More memory: the configuration is updated, the code is not.
    let moved: Value = app
        .patch_json("/api/v1/clankers/lambda", &json!({"compute_config": compute(&role, json!({"memory_mb": 4096}))}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["status"], "active", "{moved}");
    assert!(moved["status_message"].as_str().unwrap().contains("updated"), "{moved}");
    assert_eq!(updates(&proxy), ["CreateFunction", "UpdateFunctionConfiguration"]);
    let memory = moto
        .boto3("print(client('lambda').get_function_configuration(FunctionName='viberglass-worker')['MemorySize'])");
    assert_eq!(memory, "4096");

    // The server's role without lambda:UpdateFunctionConfiguration: named, with the fix; then Start works.
    proxy.deny("UpdateFunctionConfiguration");
    let denied: Value = app
        .patch_json("/api/v1/clankers/lambda", &json!({"compute_config": compute(&role, json!({"memory_mb": 3072}))}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(denied["status"], "failed", "{denied}");
    let message = denied["status_message"].as_str().unwrap();
    assert!(
        message.contains("the server's AWS role lacks `lambda:UpdateFunctionConfiguration`: add it to the role")
            && message.contains("request id"),
        "{message}"
    );
    proxy.allow("UpdateFunctionConfiguration");
    assert_eq!(start(&app, "lambda").await["status"], "active");

    // An image ECR does not have, and a subnet of another VPC, as Lambda words them: named, with the fix.
    proxy.fail_next(
        "UpdateFunctionConfiguration",
        "InvalidParameterValueException",
        "Error occurred while DescribeSubnets. EC2 Error Code: InvalidSubnetID.NotFound. EC2 Error Message: The subnet \
         ID 'subnet-0gone' does not exist",
    );
    let vpc: Value = app
        .patch_json(
            "/api/v1/clankers/lambda",
            &json!({"compute_config": compute(&role, json!({"subnets": ["subnet-0gone"], "security_groups": ["sg-0abc"]}))}),
        )
        .await
        .json()
        .await
        .unwrap();
    let message = vpc["status_message"].as_str().unwrap();
    assert!(message.contains("re-deploy the workers' network settings"), "{message}");
    proxy.fail_next(
        "UpdateFunctionCode",
        "InvalidParameterValueException",
        "Source image 123456789012.dkr.ecr.us-east-1.amazonaws.com/viberglass-worker:2 does not exist. Provide a valid \
         source image.",
    );
    let image: Value = app
        .patch_json(
            "/api/v1/clankers/lambda",
            &json!({"compute_config": compute(&role, json!({"image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/viberglass-worker:2"}))}),
        )
        .await
        .json()
        .await
        .unwrap();
    let message = image["status_message"].as_str().unwrap();
    assert!(
        message.contains("the image URI was not found in ECR") && message.contains("push the worker image"),
        "{message}"
    );

    // Its page warns of the ceiling.
    let page = app.get("/clankers/lambda").await.text().await.unwrap();
    assert!(page.contains("Lambda stops every run at 15 minutes") && page.contains("switch its compute to"), "{page}");

    // A timeout above Lambda's ceiling is refused when saved.
    let refused = app
        .patch_json(
            "/api/v1/clankers/lambda",
            &json!({"compute_config": compute(&role, json!({"timeout_secs": 1200}))}),
        )
        .await;
    assert_eq!(refused.status(), 422, "checked against the clanker's target (Lambda)");
    assert!(refused.text().await.unwrap().contains("switch the clanker to ECS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_lambda_handler_completes_a_research_run_the_server_invoked() {
    let Some(moto) = Moto::start() else { return };
    let role = role(&moto);
    let proxy = AwsProxy::start(&moto.endpoint).await;
    let app = app(&moto, &proxy).await;
    let repo = ServedRepo::with_files(&[("README.md", "Shop\n")]).await;
    // Within Lambda's 15 minutes (the default limit, 45 minutes, is not).
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "planning_needs_approval": false,
                              "max_execution_secs": 600}))
        .await;
    // A database secret (the original's ECS and Lambda workers never got these): it comes with the bootstrap.
    let stored = app
        .post_json(
            "/api/v1/secrets",
            &json!({"name": "SOME_SECRET", "backend": "database", "value": "stored-value-123"}),
        )
        .await;
    assert!(stored.status().is_success(), "{}", stored.text().await.unwrap());
    clanker(&app, json!({"shared": true, "name": "Lambda", "agent": "command", "compute": "lambda",
                         "compute_config": compute(&role, json!({})), "secrets": ["SOME_SECRET"],
                         "agent_settings": {"command": ["sh", "-c", "echo in-lambda secret-length=${#SOME_SECRET} creds=${AWS_SECRET_ACCESS_KEY:-none} runtime=${AWS_LAMBDA_RUNTIME_API:-none}; printf '# Findings\\n' > RESEARCH.md"]}}))
    .await;
    assert_eq!(start(&app, "lambda").await["status"], "active");
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    let id = app.run_phase(ticket["id"].as_str().unwrap(), "lambda", "research").await;

    // The server's asynchronous invocation, as Lambda would hand it to the function.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let payload = loop {
        if let Some(payload) = proxy.bodies("Invoke").into_iter().find(|p| p["job_id"] == id) {
            break payload;
        }
        assert!(std::time::Instant::now() < deadline, "the server never invoked the function: {:?}", proxy.actions());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(payload["token"].as_str().is_some_and(|t| t.len() == 64), "{payload}");
    let runtime = FakeLambdaRuntime::start().await;
    let request = runtime.invoke(payload);
    let tmp = tempfile::tempdir().unwrap();
    let mut worker = tokio::process::Command::new(BINARY)
        .args(["worker", "--lambda"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", tmp.path())
        .env("AWS_LAMBDA_RUNTIME_API", runtime.api())
        // As Lambda gives a function its role.
        .env("AWS_ACCESS_KEY_ID", "ASIAFUNCTIONROLE")
        .env("AWS_SECRET_ACCESS_KEY", "function-role-secret")
        .env("AWS_SESSION_TOKEN", "function-role-session")
        .env("VIBERGLASS_WORKSPACE", tmp.path())
        .env("LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let done = app.wait_for_job(&id, &["completed", "failed"], Duration::from_secs(60)).await;
    let events = app.job_events(&id).await;
    assert_eq!(done["status"], "completed", "{done}\n{events}");
    // The function's own role credentials and its Runtime API stay with the worker.
    assert!(events.contains("in-lambda secret-length=16 creds=none runtime=none"), "{events}");
    assert!(events.contains("its own log: CloudWatch Logs group /aws/lambda/viberglass-worker"), "{events}");
    assert_eq!(
        done["compute_ref"],
        format!("lambda:{}:viberglass-worker/{id}", done["compute_ref"].as_str().unwrap().split(':').nth(1).unwrap())
    );
    let (kind, answer) = runtime.wait_for_answer(&request, Duration::from_secs(10)).await;
    assert_eq!((kind.as_str(), &answer["exit_code"]), ("response", &json!(0)), "{answer}");
    assert!(!tmp.path().join(format!("job-{id}")).exists(), "the invocation's workspace is removed after it");

    // One invocation per execution environment: the worker has exited.
    let status = tokio::time::timeout(Duration::from_secs(10), worker.wait()).await.expect("the worker exits").unwrap();
    assert!(status.success(), "{status}");

    // An invocation that is not a Viberglass job, or names another server than the function's, is refused.
    let lambda_worker = |runtime: &FakeLambdaRuntime| {
        tokio::process::Command::new(BINARY)
            .args(["worker", "--lambda"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", tmp.path())
            .env("AWS_LAMBDA_RUNTIME_API", runtime.api())
            .env("VIBERGLASS_WORKSPACE", tmp.path())
            .env("VIBERGLASS_SERVER_URL", app.url(""))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    for (event, says) in [
        (json!({"hello": "world"}), "not a Viberglass job"),
        (
            json!({"job_id": id, "server_url": "http://attacker.example", "token": "x"}),
            "names the server http://attacker.example",
        ),
    ] {
        let mut stray_worker = lambda_worker(&runtime);
        let stray = runtime.invoke(event);
        let (kind, answer) = runtime.wait_for_answer(&stray, Duration::from_secs(10)).await;
        assert_eq!(kind, "error", "{answer}");
        assert_eq!(answer["errorType"], "InvalidInvocation");
        assert!(answer["errorMessage"].as_str().unwrap().contains(says), "{answer}");
        let _ = stray_worker.kill().await;
    }
    let _ = worker.kill().await;

    // Cancel cannot reach into Lambda: the job's log says how the worker will stop.
    let id = app.run_phase(ticket["id"].as_str().unwrap(), "lambda", "research").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !proxy.bodies("Invoke").iter().any(|p| p["job_id"] == id) {
        assert!(std::time::Instant::now() < deadline, "the second run was never invoked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancelled = app.post_json(&format!("/api/v1/jobs/{id}/cancel"), &json!({})).await;
    assert!(cancelled.status().is_success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = app.job_events(&id).await;
        if events
            .contains("cannot be stopped from outside: the worker stops when the server answers its next heartbeat")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{events}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_limit_above_fifteen_minutes_refuses_lambda_and_switching_to_ecs_keeps_the_clanker() {
    let Some(moto) = Moto::start() else { return };
    let role = role(&moto);
    let proxy = AwsProxy::start(&moto.endpoint).await;
    let app = app(&moto, &proxy).await;
    let repo = ServedRepo::with_files(&[("README.md", "Shop\n")]).await;
    app.create_project(json!({"name": "Shop", "repository_url": repo.url(), "max_execution_secs": 1200})).await;
    // Scoped to that project, a Lambda clanker is refused at once.
    let scoped = app
        .post_json(
            "/api/v1/clankers",
            &json!({"shared": false, "projects": ["shop"], "name": "Scoped", "agent": "command", "compute": "lambda",
                    "compute_config": compute(&role, json!({})), "agent_settings": {"command": ["true"]}}),
        )
        .await;
    assert_eq!(scoped.status(), 400);
    let text = scoped.text().await.unwrap();
    assert!(text.contains("project shop allows runs of 1200 s, above Lambda's 900 s ceiling"), "{text}");

    let created = clanker(&app, json!({"shared": true, "name": "Lambda", "agent": "command", "compute": "lambda",
                                       "compute_config": compute(&role, json!({})), "agent_settings": {"command": ["true"]}}))
    .await;
    assert_eq!(start(&app, "lambda").await["status"], "active");
    let ticket = app.create_ticket("shop", json!({"title": "Fix the readme"})).await;
    let ticket = ticket["id"].as_str().unwrap().to_owned();
    // And a project a Lambda clanker is scoped to cannot raise its limit above the ceiling.
    app.create_project(json!({"name": "Short", "repository_url": repo.url(), "max_execution_secs": 600})).await;
    clanker(
        &app,
        json!({"shared": false, "projects": ["short"], "name": "Quick", "agent": "command", "compute": "lambda",
                         "compute_config": compute(&role, json!({"function_name": "viberglass-quick"})),
                         "agent_settings": {"command": ["true"]}}),
    )
    .await;
    let raised = app.patch_json("/api/v1/projects/short", &json!({"max_execution_secs": 1800})).await;
    assert_eq!(raised.status(), 400);
    let text = raised.text().await.unwrap();
    assert!(text.contains("clanker `quick` runs this project's jobs on Lambda"), "{text}");

    let refused = app
        .post_json(&format!("/api/v1/tickets/{ticket}/runs"), &json!({"phase": "research", "clanker": "lambda"}))
        .await;
    assert_eq!(refused.status(), 422);
    let text = refused.text().await.unwrap();
    assert!(text.contains("time_limit_above_lambda") && text.contains("switch the clanker to ECS"), "{text}");

    // Switched to ECS (as the editor does): same id, checked again, and the run is accepted.
    let ids = moto.boto3(
        "ecs = client('ecs'); ec2 = client('ec2')\n\
         ecs.create_cluster(clusterName='workers')\n\
         vpc = ec2.create_vpc(CidrBlock='10.0.0.0/16')['Vpc']['VpcId']\n\
         ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={'Value': True})\n\
         subnet = ec2.create_subnet(VpcId=vpc, CidrBlock='10.0.1.0/24')['Subnet']['SubnetId']\n\
         sg = ec2.create_security_group(GroupName='workers', Description='w', VpcId=vpc)['GroupId']\n\
         print(subnet, sg)",
    );
    let (subnet, sg) = ids.split_once(' ').unwrap();
    let moved: Value = app
        .patch_json(
            "/api/v1/clankers/lambda",
            &json!({"compute": "ecs", "compute_config": {"cluster": "workers", "image": IMAGE, "subnets": [subnet],
                                                         "security_groups": [sg]}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["id"], created["id"]);
    assert_eq!(moved["status"], "active", "{moved}");
    let accepted = app
        .post_json(&format!("/api/v1/tickets/{ticket}/runs"), &json!({"phase": "research", "clanker": "lambda"}))
        .await;
    assert_eq!(accepted.status(), 202, "{}", accepted.text().await.unwrap());
}
