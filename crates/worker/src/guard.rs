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

/// Every descendant of this process other than `except` (the agent's
/// leader while the runtime has not reaped it yet) and its descendants,
/// from `/proc`.
fn descendants(except: Option<u32>) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![std::process::id()];
    while let Some(parent) = frontier.pop() {
        for (pid, _) in parents.iter().filter(|(pid, ppid)| *ppid == parent && Some(*pid) != except) {
            if !found.contains(pid) {
                found.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    found
}

/// The parent pid in `/proc/<pid>/stat` (the field after the command's closing parenthesis and state).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Stops every process the agent left behind (now descendants of the
/// worker, whatever their session or group): each round freezes all of them
/// first (so none can fork past the sweep), then kills them, until a round
/// finds none. `agent_leader` is excluded while the runtime may still reap it
/// (pass `None` once it has). Returns how many were stopped, or how many
/// are still there when ten seconds did not get rid of them all.
pub async fn stop_leftovers(agent_leader: Option<u32>) -> Result<usize, usize> {
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut stopped = 0;
        loop {
            let found = descendants(agent_leader);
            if found.is_empty() {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(found.len());
            }
            let pids: Vec<Pid> = found.iter().filter_map(|pid| Pid::from_raw(*pid as i32)).collect();
            for pid in &pids {
                let _ = rustix::process::kill_process(*pid, Signal::STOP);
            }
            for pid in &pids {
                if rustix::process::kill_process(*pid, Signal::KILL).is_ok() {
                    stopped += 1;
                }
            }
            // Reaped here (those that are our children): the runtime only reaps the children it started.
            for pid in &pids {
                for _ in 0..100 {
                    match rustix::process::waitpid(Some(*pid), WaitOptions::NOHANG) {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }
        }
        Ok(stopped)
    })
    .await
    .unwrap_or(Ok(0))
}

/// How many processes the kernel has killed for memory in this process's
/// memory cgroup (a container's limit, or a systemd unit's), when it tells:
/// cgroup v2's `memory.events`, or v1's `memory.oom_control`. A rise across
/// the agent's run means the agent hit the memory limit.
pub fn oom_kills() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut candidates = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.events"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.oom_control"));
        }
    }
    // In a container the cgroup's own directory is mounted at the root.
    candidates.push("/sys/fs/cgroup/memory.events".into());
    candidates.push("/sys/fs/cgroup/memory/memory.oom_control".into());
    candidates.iter().find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_where_the_kernel_tells_them() {
        // Every Linux machine the tests run on has a memory cgroup of some kind.
        assert!(oom_kills().is_some(), "no memory.events or memory.oom_control readable");
    }

    #[test]
    fn the_parent_is_read_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent_of(std::process::id()), Some(std::os::unix::process::parent_id()));
    }
}
