//! AWS stand-in: moto's server (installed by `scripts/test` from PyPI),
//! started on loopback for one test and stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// Starts `moto_server` on a free port. `None` when moto is not installed
    /// (outside CI); under `CI=true` a missing moto fails the test instead.
    pub fn start() -> Option<Moto> {
        let port = crate::process::free_port();
        let spawned = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                assert!(
                    std::env::var("CI").is_err(),
                    "moto_server is not installed ({e}): scripts/test installs it (pip install 'moto[server]')"
                );
                eprintln!("skipping: moto_server is not installed ({e})");
                return None;
            }
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {endpoint} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Moto { child, endpoint })
    }

    /// The standard AWS settings that point a client at this stand-in.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ]
    }
}

impl Moto {
    /// Runs a Python script with boto3 (moto's virtual environment has it)
    /// against this stand-in, e.g. to create what a test needs in EC2; returns
    /// what it printed. The script sees a `session` (boto3, us-east-1, this endpoint).
    pub fn boto3(&self, script: &str) -> String {
        let program = format!(
            "import boto3, json\nsession = boto3.session.Session(region_name='us-east-1', aws_access_key_id='testing', \
             aws_secret_access_key='testing')\ndef client(name):\n    return session.client(name, endpoint_url='{}')\n{script}",
            self.endpoint
        );
        let out = Command::new("python3").arg("-c").arg(&program).output().expect("python3 runs");
        assert!(out.status.success(), "boto3 script failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Makes moto's Lambda answer invocations itself instead of running them in Docker (which would pull an image).
    pub fn lambda_without_docker(&self) {
        let out = Command::new("curl")
            .args([
                "-sf",
                "-X",
                "POST",
                &format!("{}/moto-api/config", self.endpoint),
                "-d",
                r#"{"lambda":{"use_docker":false}}"#,
            ])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "moto config failed");
    }

    /// Sets how moto moves a model's state on (e.g. `ecs::task` with `times`: describe calls per step).
    pub fn set_transition(&self, model: &str, times: u32) {
        let body = format!(r#"{{"model_name":"{model}","transition":{{"progression":"manual","times":{times}}}}}"#);
        let out = Command::new("curl")
            .args([
                "-sf",
                "-X",
                "POST",
                &format!("{}/moto-api/state-manager/set-transition", self.endpoint),
                "-d",
                &body,
            ])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "moto set-transition failed");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
