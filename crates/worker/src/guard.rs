//! The worker's protection of itself from its agent, and of the host from
//! what the agent leaves behind.
//!
//! - The worker is made non-dumpable, so no process of the same user (the
//!   agent, in a run without a sandbox) can read its memory or environment
//!   through `/proc/<pid>/mem`, `/proc/<pid>/environ` or ptrace.
//! - The worker is a child subreaper: whatever the agent starts and leaves
//!   behind (a daemon it detached with `setsid`, outside its process group)
//!   becomes the worker's child when its parent exits, and is stopped by
//!   [`stop_leftovers`] before git runs on the checkout. In a sandboxed run
//!   the agent's own PID namespace already ends with it; this covers
//!   `VIBERGLASS_SANDBOX=none`.

use std::time::Duration;

use rustix::process::{DumpableBehavior, Pid, Signal, WaitOptions};

/// Applies both at the worker's start. Failure to do either is logged, not fatal.
pub fn harden() {
    if let Err(e) = rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "could not make the worker non-dumpable");
    }
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::warn!(error = %e, "could not make the worker a child subreaper");
    }
}

/// This process's children other than `except` (the agent's leader, which
/// the runtime reaps itself), from `/proc`.
fn children(except: Option<u32>) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != except)
        .filter(|pid| parent_of(*pid) == Some(me))
        .collect()
}

/// The parent pid in `/proc/<pid>/stat` (the field after the command's closing parenthesis and state).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Stops every process the agent left behind (now children of the worker),
/// and their children as they are orphaned in turn. Returns how many were stopped.
pub async fn stop_leftovers(agent_leader: Option<u32>) -> usize {
    tokio::task::spawn_blocking(move || {
        let mut stopped = 0;
        // Each pass kills the current orphans; their own children then become ours.
        for _ in 0..50 {
            let found = children(agent_leader);
            if found.is_empty() {
                break;
            }
            for pid in found {
                let Some(raw) = Pid::from_raw(pid as i32) else { continue };
                if rustix::process::kill_process(raw, Signal::KILL).is_ok() {
                    stopped += 1;
                }
                // Reaped here: the runtime only reaps the children it started.
                for _ in 0..100 {
                    match rustix::process::waitpid(Some(raw), WaitOptions::NOHANG) {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        }
        stopped
    })
    .await
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent_of(std::process::id()), Some(std::os::unix::process::parent_id()));
    }
}
