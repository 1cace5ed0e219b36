//! The HTTP workloads of issue 22's table measured with `wrk` (one thread, a
//! warm-up run first, then the timed run), the same client the original's
//! figures came from: a light C client, where the bench's own Rust client
//! spends as much CPU per request as the server it measures.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// What one timed `wrk` run measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The request each connection repeats.
#[derive(Clone, Copy)]
pub enum Script {
    /// A GET of the URL as given.
    Get,
    /// POST a new ticket, numbered per request so each is distinct; one in a
    /// hundred mentions the checkout, as the search finds.
    CreateTicket,
}

impl Script {
    fn lua(&self) -> &'static str {
        match self {
            Script::Get => "",
            Script::CreateTicket => {
                r#"local n = 0
request = function()
  n = n + 1
  local what = "the layout shifts on small screens"
  if n % 100 == 0 then what = "the checkout button does nothing" end
  local body = '{"title":"Wrk ticket ' .. n .. ': ' .. what .. '","description":"Steps to reproduce: open the page, resize the window. Expected: no shift.","severity":"medium"}'
  return wrk.format("POST", nil, nil, body)
end
"#
            }
        }
    }
}

/// Whether a `wrk` binary is on the PATH.
pub fn available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// Runs `wrk` for `warmup` seconds (discarded), then for `seconds`, with
/// `connections` connections on one thread, and returns the timed run.
/// Any non-2xx answer or socket error fails the run: a figure that counts
/// refusals measures nothing.
pub fn run(url: &str, token: &str, script: &Script, connections: usize, warmup: u32, seconds: u32) -> Result<Run> {
    let file = tempfile::Builder::new().suffix(".lua").tempfile()?;
    std::fs::write(file.path(), script.lua())?;
    let once = |duration: u32| -> Result<Run> {
        let output = Command::new("wrk")
            .args([
                "-t1",
                "-c",
                &connections.to_string(),
                "-d",
                &format!("{duration}s"),
                "--latency",
                "--timeout",
                "10s",
            ])
            .args(["-H", &format!("Authorization: Bearer {token}"), "-H", "Content-Type: application/json", "-s"])
            .arg(file.path())
            .arg(url)
            .output()
            .context("running wrk")?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
        }
        parse(&text)
    };
    if warmup > 0 {
        once(warmup)?;
    }
    once(seconds)
}

/// Reads wrk's `--latency` report.
pub fn parse(text: &str) -> Result<Run> {
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        bail!("the server refused requests ({}):\n{text}", line.trim());
    }
    if let Some(line) = text.lines().find(|l| l.trim_start().starts_with("Socket errors")) {
        bail!("wrk saw socket errors ({}):\n{text}", line.trim());
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk printed no Requests/sec:\n{text}"))?;
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("wrk printed no request count:\n{text}"))?;
    let percentile = |label: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| duration_ms(v.trim()))
            .with_context(|| format!("wrk printed no {label} latency:\n{text}"))
    };
    Ok(Run { requests, rps, p50_ms: percentile("50%")?, p99_ms: percentile("99%")? })
}

/// `1.23ms`, `456.00us`, `1.20s`, `2.00m` in milliseconds.
fn duration_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 5s test @ http://127.0.0.1:1/api/v1/tickets
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.10ms    1.20ms  30.00ms   90.00%
    Req/Sec     3.10k   200.00     3.50k    70.00%
  Latency Distribution
     50%    4.90ms
     75%    5.50ms
     90%    6.20ms
     99%  812.00us
  15500 requests in 5.00s, 10.00MB read
Requests/sec:   3100.25
Transfer/sec:      2.00MB
";

    #[test]
    fn reads_the_report() {
        let run = parse(REPORT).unwrap();
        assert_eq!(run.requests, 15500);
        assert!((run.rps - 3100.25).abs() < 1e-9);
        assert!((run.p50_ms - 4.9).abs() < 1e-9);
        assert!((run.p99_ms - 0.812).abs() < 1e-9);
    }

    #[test]
    fn refusals_and_socket_errors_fail_the_run() {
        let refused = REPORT.replace("Requests/sec", "  Non-2xx or 3xx responses: 12\nRequests/sec");
        assert!(parse(&refused).unwrap_err().to_string().contains("Non-2xx"));
        let broken =
            REPORT.replace("Requests/sec", "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec");
        assert!(parse(&broken).unwrap_err().to_string().contains("socket errors"));
        assert!(parse("nothing").is_err());
    }
}
