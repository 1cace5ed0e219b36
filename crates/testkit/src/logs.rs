//! Captures the JSON log lines of every server in this test process, so
//! tests can assert what was logged (e.g. that a request's lines carry its id).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use viberglass_server::config::LogFormat;

static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once per process.
pub fn capture() {
    BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let for_writer = buffer.clone();
        let subscriber = viberglass_server::telemetry::subscriber(
            LogFormat::Json,
            "info",
            false,
            move || SharedWriter(for_writer.clone()),
            None,
        );
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    });
}

/// Every captured line that mentions `needle`, parsed as JSON.
pub fn lines_containing(needle: &str) -> Vec<serde_json::Value> {
    let Some(buffer) = BUFFER.get() else {
        return Vec::new();
    };
    let bytes = buffer.lock().unwrap_or_else(|e| e.into_inner()).clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// A field of a JSON log line: the event's own, else the innermost
/// enclosing span's that has it.
pub fn field<'a>(line: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    if let Some(value) = line.get(name) {
        return value;
    }
    if let Some(value) = line.get("span").and_then(|s| s.get(name)) {
        return value;
    }
    line.get("spans")
        .and_then(|spans| spans.as_array())
        .and_then(|spans| spans.iter().rev().find_map(|s| s.get(name)))
        .unwrap_or(&serde_json::Value::Null)
}
