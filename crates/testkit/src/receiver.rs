//! A webhook receiver, as a subscriber would write one: it verifies every
//! delivery with the Standard Webhooks reference library (`standardwebhooks`)
//! against the secrets it is given, counts events by `webhook-id`, and notices
//! when two deliveries of the same event are in flight at once. It can answer
//! a chosen status, be slow, or go down (its port closed: connections are
//! refused) and come back on the same port.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: i64,
    pub body: serde_json::Value,
    pub headers: HeaderMap,
    /// Which of the receiver's secrets verified it (indexes into the secrets it was given).
    pub verified_by: Vec<usize>,
    /// The status it was answered.
    pub answered: u16,
}

#[derive(Default)]
struct Inner {
    secrets: Vec<String>,
    received: Vec<Received>,
    in_flight: HashSet<String>,
    /// Event ids seen delivered concurrently (a second request while the first was unanswered).
    overlaps: Vec<String>,
    status: u16,
    delay: Duration,
    /// Distinct `webhook-id`s answered 2xx (kept as they come, so counting is cheap under load).
    accepted_ids: HashSet<String>,
    /// Down: the port is closed; a request on a connection opened before gets 503 and the connection closes.
    down: bool,
}

/// A receiver on loopback.
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

async fn receive(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    if inner.lock().unwrap().down {
        return (StatusCode::SERVICE_UNAVAILABLE, [("connection", "close")], "down").into_response();
    }
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let delay = {
        let mut g = inner.lock().unwrap();
        if !g.in_flight.insert(id.clone()) {
            g.overlaps.push(id.clone());
        }
        g.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut g = inner.lock().unwrap();
    g.in_flight.remove(&id);
    let verified_by = g
        .secrets
        .iter()
        .enumerate()
        .filter(|(_, s)| standardwebhooks::Webhook::new(s).is_ok_and(|w| w.verify(&body, &headers).is_ok()))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    let answered = g.status;
    if (200..300).contains(&answered) {
        g.accepted_ids.insert(id.clone());
    }
    let timestamp = headers.get("webhook-timestamp").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    g.received.push(Received {
        id,
        timestamp,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        headers,
        verified_by,
        answered,
    });
    StatusCode::from_u16(answered).unwrap_or(StatusCode::OK).into_response()
}

impl Receiver {
    /// Starts a receiver verifying with `secret` (more can be added), answering 200.
    pub async fn start(secret: &str) -> Receiver {
        let inner = Arc::new(Mutex::new(Inner { secrets: vec![secret.to_owned()], status: 200, ..Default::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver { inner, addr, server: Mutex::new(None) };
        receiver.serve(listener);
        receiver
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new().route("/hook", post(receive)).with_state(self.inner.clone());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.server.lock().unwrap() = Some(handle);
    }

    /// Where to subscribe: `http://127.0.0.1:<port>/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Also accept signatures made with this secret (its index is the next one).
    pub fn add_secret(&self, secret: &str) -> usize {
        let mut g = self.inner.lock().unwrap();
        g.secrets.push(secret.to_owned());
        g.secrets.len() - 1
    }

    /// Verify only with this secret from now on.
    pub fn set_secret(&self, secret: &str) {
        self.inner.lock().unwrap().secrets = vec![secret.to_owned()];
    }

    /// The status every request is answered with.
    pub fn answer(&self, status: u16) {
        self.inner.lock().unwrap().status = status;
    }

    /// How long each answer takes.
    pub fn delay(&self, delay: Duration) {
        self.inner.lock().unwrap().delay = delay;
    }

    /// Closes the port: connections are refused until [`Receiver::up`].
    pub fn down(&self) {
        self.inner.lock().unwrap().down = true;
        if let Some(h) = self.server.lock().unwrap().take() {
            h.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&self) {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind the receiver on {}: {e}", self.addr),
            }
        };
        self.inner.lock().unwrap().down = false;
        self.serve(listener);
    }

    /// Every delivery received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Deliveries answered 2xx, by `webhook-id`: how many times each.
    pub fn accepted(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for r in self.inner.lock().unwrap().received.iter().filter(|r| (200..300).contains(&r.answered)) {
            *out.entry(r.id.clone()).or_default() += 1;
        }
        out
    }

    /// How many distinct events were answered 2xx (without copying what arrived).
    pub fn accepted_count(&self) -> usize {
        self.inner.lock().unwrap().accepted_ids.len()
    }

    /// How many deliveries failed signature verification.
    pub fn unverified_count(&self) -> usize {
        self.inner.lock().unwrap().received.iter().filter(|r| r.verified_by.is_empty()).count()
    }

    /// Event ids that arrived while an earlier delivery of the same id was still unanswered.
    pub fn overlaps(&self) -> Vec<String> {
        self.inner.lock().unwrap().overlaps.clone()
    }

    /// Waits until `pred` holds over what was received, or panics after `timeout` with what arrived.
    pub async fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            if tokio::time::Instant::now() > deadline {
                let types: Vec<String> =
                    got.iter().map(|r| format!("{} {} → {}", r.id, r.body["type"], r.answered)).collect();
                panic!(
                    "the receiver did not get {what} within {timeout:?}; it got {} deliveries: {types:#?}",
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(h) = self.server.lock().unwrap().take() {
            h.abort();
        }
    }
}
