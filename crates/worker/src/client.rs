//! The callback client: every call to the server, retried with exponential
//! backoff and jitter while the server is unreachable or answers 5xx, so a
//! server restart does not lose a running job. A 4xx is final.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use viberglass_domain::JobId;
use viberglass_domain::protocol::{
    Bootstrap, DocumentReply, DocumentUpload, EventBatch, EventsReply, HeartbeatReply, PREFIX, ResultReply,
    WorkerResult,
};

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered and refused: retrying will not help.
    #[error("the server refused {what} ({status}): {body}")]
    Refused { what: &'static str, status: u16, body: String },
    /// The server could not be reached for as long as we were willing to try.
    #[error("the server did not answer {what} for {waited_secs} s: {last}")]
    Unavailable { what: &'static str, waited_secs: u64, last: String },
}

impl CallError {
    /// The job ended on the server (cancelled, reaped or already finished).
    pub fn job_ended(&self) -> bool {
        matches!(self, CallError::Refused { status: 410, .. })
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// This worker process's own one-time value: its bootstrap is answered
    /// again when it retries, and refused to anyone else holding the token.
    instance: String,
}

impl Client {
    pub fn new(server_url: &str, job_id: JobId, token: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with default TLS settings builds");
        let base = format!("{}{PREFIX}/jobs/{job_id}", server_url.trim_end_matches('/'));
        let instance = format!("{:032x}", rand::random::<u128>());
        Self { http, base, token, instance }
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        what: &'static str,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        patience: Duration,
    ) -> Result<R, CallError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .header(viberglass_domain::protocol::INSTANCE_HEADER, &self.instance);
            if let Some(body) = body {
                request = request.json(body);
            }
            let last = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return response.json::<R>().await.map_err(|e| CallError::Refused {
                        what,
                        status: 200,
                        body: format!("unreadable answer: {e}"),
                    });
                }
                Ok(response) if response.status().is_client_error() => {
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    return Err(CallError::Refused { what, status, body: body.chars().take(500).collect() });
                }
                Ok(response) => format!("HTTP {}", response.status()),
                Err(err) => err.to_string(),
            };
            if started.elapsed() >= patience {
                return Err(CallError::Unavailable { what, waited_secs: started.elapsed().as_secs(), last });
            }
            tracing::warn!(call = what, error = %last, retry_in_ms = delay.as_millis() as u64, "server call failed; retrying");
            // Full jitter: spread retries of many workers after a server restart.
            let jittered = delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            tokio::time::sleep(jittered).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    pub async fn bootstrap(&self) -> Result<Bootstrap, CallError> {
        self.call::<(), _>("bootstrap", reqwest::Method::GET, "/bootstrap", None, Duration::from_secs(120)).await
    }

    pub async fn heartbeat(&self) -> Result<HeartbeatReply, CallError> {
        self.call::<(), _>("heartbeat", reqwest::Method::POST, "/heartbeat", None, Duration::from_secs(10)).await
    }

    pub async fn events(&self, batch: &EventBatch) -> Result<EventsReply, CallError> {
        self.call("events", reqwest::Method::POST, "/events", Some(batch), Duration::from_secs(600)).await
    }

    pub async fn document(&self, content: String) -> Result<DocumentReply, CallError> {
        let body = DocumentUpload { content };
        self.call("document upload", reqwest::Method::POST, "/document", Some(&body), Duration::from_secs(600)).await
    }

    pub async fn result(&self, result: &WorkerResult) -> Result<ResultReply, CallError> {
        self.call("result", reqwest::Method::POST, "/result", Some(result), Duration::from_secs(900)).await
    }
}
