//! The event sink: progress steps and log lines, numbered, batched and sent
//! in order. Lines are bounded in size (by the server) and in rate (here):
//! past the rate, lines are dropped and the drop is reported as a line.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use viberglass_domain::protocol::EventBatch;
use viberglass_domain::{EventKind, LogLevel, NewJobEvent};

use crate::client::Client;

/// Most lines per second kept; more are counted and reported as dropped.
pub const MAX_LINES_PER_SECOND: u32 = 500;
const BATCH_SIZE: usize = 200;
const FLUSH_EVERY: Duration = Duration::from_millis(250);

enum Message {
    Event(EventKind, LogLevel, String, Option<serde_json::Value>),
    Close(tokio::sync::oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Message>,
    /// The step running now, as a span (a trace shows the worker's steps); the next step ends it.
    step: std::sync::Arc<std::sync::Mutex<Option<(&'static str, tracing::Span)>>>,
}

/// A progress message's step, as its span is named: a closed set, so a trace never carries what a message names
/// (a repository, a branch, a file).
pub fn step_name(message: &str) -> &'static str {
    const PREFIXES: &[(&str, &str)] = &[
        ("preparing", "prepare"),
        ("cloning", "clone"),
        ("continuing branch", "clone"),
        ("writing instruction", "instructions"),
        ("running the agent", "agent"),
        ("uploading", "upload"),
        ("committing", "commit"),
        ("pushing", "push"),
        ("opening the", "pull_request"),
        ("opened", "pull_request"),
        ("updated the open", "pull_request"),
    ];
    PREFIXES.iter().find(|(prefix, _)| message.starts_with(prefix)).map_or("step", |(_, name)| name)
}

impl EventSink {
    /// Starts the background sender. Every occurrence of a value in
    /// `redact` (the job's secrets) is replaced by `***` before it leaves.
    pub fn start(client: Client, redact: Vec<String>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let redact: Vec<String> = redact.into_iter().filter(|v| v.len() >= 4).collect();
        tokio::spawn(run(client, rx, redact));
        Self { tx, step: Default::default() }
    }

    /// A sink that sends nothing (for tests).
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        let (tx, _) = mpsc::unbounded_channel();
        Self { tx, step: Default::default() }
    }

    pub fn progress(&self, step: &str) {
        tracing::info!(step, "progress");
        let name = step_name(step);
        let mut current = self.step.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_none_or(|(running, _)| *running != name) {
            // A child of the caller's span (the worker's); replacing the last step ends it.
            *current = Some((name, tracing::info_span!("step", otel.name = name, step.name = name)));
        }
        drop(current);
        let _ = self.tx.send(Message::Event(EventKind::Progress, LogLevel::Info, step.to_owned(), None));
    }

    /// A normalized agent event, with its one-line summary as the message.
    pub fn agent(&self, event: &viberglass_agents::AgentEvent) {
        let level = match event {
            viberglass_agents::AgentEvent::Error { .. } => LogLevel::Error,
            viberglass_agents::AgentEvent::ToolFinished { ok: false, .. } => LogLevel::Warn,
            _ => LogLevel::Info,
        };
        let data = serde_json::to_value(event).ok();
        let _ = self.tx.send(Message::Event(EventKind::Agent, level, event.summary(), data));
    }

    pub fn log(&self, level: LogLevel, line: &str) {
        let _ = self.tx.send(Message::Event(EventKind::Log, level, line.to_owned(), None));
    }

    /// Sends everything still buffered and stops the sender (and ends the last step's span).
    pub async fn close(&self) {
        drop(self.step.lock().unwrap_or_else(|e| e.into_inner()).take());
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Message::Close(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

struct RateLimit {
    window: Instant,
    in_window: u32,
    dropped: u64,
}

impl RateLimit {
    /// Whether a line may pass now; reports the drops of a finished window.
    fn admit(&mut self) -> (bool, Option<u64>) {
        let mut report = None;
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.dropped > 0 {
                report = Some(self.dropped);
            }
            self.window = Instant::now();
            self.in_window = 0;
            self.dropped = 0;
        }
        if self.in_window < MAX_LINES_PER_SECOND {
            self.in_window += 1;
            (true, report)
        } else {
            self.dropped += 1;
            (false, report)
        }
    }
}

fn dropped_line(seq: u64, count: u64) -> NewJobEvent {
    NewJobEvent {
        seq,
        kind: EventKind::Log,
        level: LogLevel::Warn,
        message: format!("dropped {count} lines: the output exceeded {MAX_LINES_PER_SECOND} lines per second"),
        data: Some(serde_json::json!({"dropped_lines": count})),
    }
}

/// Replaces every secret value in `text` with `***`.
fn redact(text: String, secrets: &[String]) -> String {
    secrets.iter().fold(
        text,
        |text, secret| if text.contains(secret.as_str()) { text.replace(secret.as_str(), "***") } else { text },
    )
}

async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<Message>, secrets: Vec<String>) {
    let mut seq = 0u64;
    let mut buffer = Vec::new();
    let mut limit = RateLimit { window: Instant::now(), in_window: 0, dropped: 0 };
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Some(Message::Event(kind, level, text, data)) => {
                    let (admitted, report) = if kind == EventKind::Log { limit.admit() } else { (true, None) };
                    if let Some(count) = report {
                        seq += 1;
                        buffer.push(dropped_line(seq, count));
                    }
                    if admitted {
                        seq += 1;
                        let data = data.map(|d| serde_json::from_str(&redact(d.to_string(), &secrets)).unwrap_or(serde_json::Value::Null));
                        buffer.push(NewJobEvent { seq, kind, level, message: redact(text, &secrets), data });
                    }
                    if buffer.len() >= BATCH_SIZE {
                        flush(&client, &mut buffer).await;
                    }
                }
                Some(Message::Close(done)) => {
                    if limit.dropped > 0 {
                        seq += 1;
                        buffer.push(dropped_line(seq, limit.dropped));
                    }
                    flush(&client, &mut buffer).await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    flush(&client, &mut buffer).await;
                    return;
                }
            },
            _ = ticker.tick() => flush(&client, &mut buffer).await,
        }
    }
}

async fn flush(client: &Client, buffer: &mut Vec<NewJobEvent>) {
    if buffer.is_empty() {
        return;
    }
    let batch = EventBatch { events: std::mem::take(buffer) };
    if let Err(err) = client.events(&batch).await {
        // The server numbers nothing twice, so losing a batch is the only
        // risk here; say so in the worker's own log.
        tracing::error!(error = %err, lost = batch.events.len(), "could not deliver job events");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_replaced() {
        let secrets = vec!["s3cr3t-value".to_owned()];
        assert_eq!(redact("token=s3cr3t-value; again s3cr3t-value".into(), &secrets), "token=***; again ***");
        assert_eq!(redact("nothing here".into(), &secrets), "nothing here");
    }

    #[test]
    fn lines_past_the_rate_are_dropped_and_reported_once_the_window_ends() {
        let mut limit = RateLimit { window: Instant::now(), in_window: 0, dropped: 0 };
        let admitted = (0..MAX_LINES_PER_SECOND + 10).filter(|_| limit.admit().0).count();
        assert_eq!(admitted, MAX_LINES_PER_SECOND as usize);
        limit.window -= Duration::from_secs(2);
        assert_eq!(limit.admit(), (true, Some(10)));
    }
}
