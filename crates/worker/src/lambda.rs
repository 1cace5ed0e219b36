//! The worker inside AWS Lambda: it serves one invocation through the Lambda
//! Runtime API (`AWS_LAMBDA_RUNTIME_API`), a job (its id, the server URL and
//! its token, from the Lambda target's invocation), in a fresh workspace
//! under the function's /tmp, then exits: Lambda then starts the next run in
//! a fresh execution environment, so nothing one job's agent left behind
//! (a process, a file in /tmp) meets the next job. An invocation naming
//! another server than the function's `VIBERGLASS_SERVER_URL` is refused.

use std::path::PathBuf;
use std::time::Duration;

use viberglass_domain::JobId;

use crate::WorkerConfig;

/// What the Lambda target sends.
#[derive(serde::Deserialize)]
struct Invocation {
    job_id: String,
    server_url: String,
    token: String,
}

/// Serves one invocation; returns the exit code.
pub async fn serve(runtime_api: &str, workspace_root: PathBuf) -> u8 {
    let expected_server = std::env::var("VIBERGLASS_SERVER_URL").ok().filter(|s| !s.is_empty());
    let base = format!("http://{runtime_api}/2018-06-01/runtime");
    // The next-invocation call waits as long as Lambda has nothing to run.
    let client = match reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("viberglass: error: cannot set up the Lambda runtime client: {e}");
            return 1;
        }
    };
    {
        let next = match client.get(format!("{base}/invocation/next")).send().await {
            Ok(next) if next.status().is_success() => next,
            Ok(next) => {
                eprintln!(
                    "viberglass: error: the Lambda Runtime API answered {} to the next invocation",
                    next.status()
                );
                return 1;
            }
            Err(e) => {
                eprintln!("viberglass: error: cannot reach the Lambda Runtime API at {runtime_api}: {e}");
                return 1;
            }
        };
        let Some(request) = next
            .headers()
            .get("lambda-runtime-aws-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 200 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .map(str::to_owned)
        else {
            eprintln!("viberglass: error: the Lambda Runtime API gave an invocation without a request id");
            return 1;
        };
        let body = next.bytes().await.unwrap_or_default();
        let invocation = serde_json::from_slice::<Invocation>(&body)
            .map_err(|e| format!("the invocation is not a Viberglass job ({e}): invoke this function from Viberglass"))
            .and_then(|i| {
                let job = i.job_id.parse::<JobId>().map_err(|_| format!("`{}` is not a job id", i.job_id))?;
                if let Some(expected) = &expected_server
                    && i.server_url.trim_end_matches('/') != expected.trim_end_matches('/')
                {
                    return Err(format!(
                        "the invocation names the server {}, not this function's {expected}: it is served only by \
                         the Viberglass server that set this function up",
                        i.server_url
                    ));
                }
                Ok((job, i))
            });
        let (job_id, invocation) = match invocation {
            Ok(found) => found,
            Err(message) => {
                let error = serde_json::json!({"errorMessage": message, "errorType": "InvalidInvocation"});
                let _ = client.post(format!("{base}/invocation/{request}/error")).json(&error).send().await;
                return 2;
            }
        };
        let workspace = workspace_root.join(format!("job-{job_id}"));
        let _ = std::fs::remove_dir_all(&workspace);
        if let Err(e) = std::fs::create_dir_all(&workspace) {
            let error = serde_json::json!({"errorMessage": format!("cannot make the workspace {}: {e}", workspace.display()),
                                           "errorType": "Workspace"});
            let _ = client.post(format!("{base}/invocation/{request}/error")).json(&error).send().await;
            return 1;
        }
        let config = WorkerConfig {
            job_id,
            server_url: invocation.server_url,
            token: invocation.token,
            workspace: workspace.clone(),
        };
        let code = crate::run(config).await;
        // The next invocation of this environment starts with an empty /tmp of its own.
        let _ = std::fs::remove_dir_all(&workspace);
        let answer = serde_json::json!({"job_id": job_id.to_string(), "exit_code": code});
        if let Err(e) = client.post(format!("{base}/invocation/{request}/response")).json(&answer).send().await {
            eprintln!("viberglass: error: cannot answer the Lambda invocation {request}: {e}");
            return 1;
        }
        code
    }
}
