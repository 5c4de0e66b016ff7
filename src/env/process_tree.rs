//! Taking a replica's whole process tree down, whatever it did to escape.
//!
//! A server may fork, start grandchildren in their own process groups, or daemonize
//! with `setsid`. Two mechanisms catch all of them:
//! - **cgroup v2**, where the node may create groups: each replica's supervisor makes a
//!   cgroup `mcpfleet-<node pid>-<supervisor pid>` beside its own, moves its server in
//!   before it runs, and ends the replica with `cgroup.kill`. The node knows the same
//!   name, so it can kill the group itself when the supervisor is gone (even by
//!   SIGKILL).
//! - Otherwise the supervisor is a **child subreaper** (`PR_SET_CHILD_SUBREAPER`): every
//!   descendant that loses its parent is re-parented to it, so walking its descendants
//!   in /proc finds them all, and each is signalled through a pidfd. Without cgroups, a
//!   supervisor killed by SIGKILL takes only its direct child with it (PDEATHSIG).
//!
//! `MCPFLEET_NO_CGROUP=1` in the node's environment turns the cgroup path off.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable that turns the cgroup mechanism off.
pub const NO_CGROUP_ENV: &str = "MCPFLEET_NO_CGROUP";
/// How long a kill waits for a cgroup to empty before it gives up on removing it.
const CGROUP_EMPTY_WAIT_MS: u64 = 1_000;
/// Rounds of "find descendants, SIGKILL them" before the subreaper gives up.
const KILL_ROUNDS: usize = 20;

/// The cgroup v2 directory this process belongs to, if cgroup v2 is mounted and usable;
/// read from /proc once per process.
fn own_cgroup_dir() -> Option<PathBuf> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(find_own_cgroup_dir).clone()
}

fn find_own_cgroup_dir() -> Option<PathBuf> {
    if std::env::var_os(NO_CGROUP_ENV).is_some_and(|v| v == "1") {
        return None;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mount-point options ... - fstype source ...
    let mount = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        if fields.get(3) != Some(&"/") {
            return None;
        }
        fields.get(4).map(PathBuf::from)
    })?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|line| line.strip_prefix("0::"))?;
    let dir = mount.join(path.trim_start_matches('/'));
    dir.join("cgroup.procs").exists().then_some(dir)
}

/// The cgroup of the replica whose supervisor is `supervisor` under node `node`.
fn replica_cgroup(base: &Path, node: u32, supervisor: u32) -> PathBuf {
    base.join(format!("mcpfleet-{node}-{supervisor}"))
}

/// A replica's cgroup, made by its supervisor.
pub struct ReplicaCgroup {
    dir: PathBuf,
}

impl ReplicaCgroup {
    /// Creates the cgroup for this supervisor (a child of the node that started it).
    /// `None` where cgroup v2 cannot be used.
    pub fn create() -> Option<ReplicaCgroup> {
        let base = own_cgroup_dir()?;
        let dir = replica_cgroup(
            &base,
            std::os::unix::process::parent_id(),
            std::process::id(),
        );
        std::fs::create_dir(&dir).ok()?;
        Some(ReplicaCgroup { dir })
    }

    /// Sets one of the group's limits (`memory.max`, `pids.max`); false where its
    /// controller is not enabled for the group.
    pub fn set_limit(&self, file: &str, value: u64) -> bool {
        std::fs::write(self.dir.join(file), value.to_string()).is_ok()
    }

    /// The file a process writes "0" to, to move itself into the group.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Kills every process in the group and removes it.
    pub async fn kill(&self) {
        kill_cgroup(&self.dir).await;
    }
}

async fn kill_cgroup(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CGROUP_EMPTY_WAIT_MS);
    while tokio::time::Instant::now() < deadline {
        let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if events.lines().any(|l| l == "populated 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = std::fs::remove_dir(dir);
}

/// Called by the node when the supervisor `supervisor` it started has exited: kills
/// whatever the replica's cgroup still holds (a supervisor killed by SIGKILL could not).
pub async fn reap_replica_cgroup(supervisor: u32) {
    let Some(base) = own_cgroup_dir() else { return };
    let dir = replica_cgroup(&base, std::process::id(), supervisor);
    if dir.exists() {
        kill_cgroup(&dir).await;
    }
}

/// Makes this process the reaper of every orphaned descendant.
pub fn become_subreaper() {
    // SAFETY: prctl with an integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    }
}

/// The direct children of `pid` (over all its threads).
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    found
}

/// Every live descendant of this process.
fn descendants() -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![std::process::id()];
    while let Some(pid) = queue.pop() {
        for child in children(pid) {
            if !found.contains(&child) {
                found.push(child);
                queue.push(child);
            }
        }
    }
    found
}

/// Signals each of `pids` through a pidfd, so that a recycled pid is never hit: every
/// pidfd is opened first, and only then is it checked (with one walk of /proc) which of
/// those processes are still descendants of this one.
fn signal_through_pidfds(pids: &[u32], signal: libc::c_int) {
    // SAFETY: raw syscalls with integer arguments; every fd opened is closed below.
    let opened: Vec<(u32, libc::c_int)> = pids
        .iter()
        .filter_map(|pid| {
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, *pid as libc::pid_t, 0) };
            (fd >= 0).then_some((*pid, fd as libc::c_int))
        })
        .collect();
    let ours = descendants();
    for (pid, fd) in opened {
        // SAFETY: as above.
        unsafe {
            if ours.contains(&pid) {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
            libc::close(fd);
        }
    }
}

/// Sends `signal` to every descendant of this process.
pub fn signal_descendants(signal: libc::c_int) {
    signal_through_pidfds(&descendants(), signal);
}

/// SIGKILLs every descendant of this process, again until none is left alive (a
/// process caught mid-fork leaves a child behind the first round).
pub fn kill_descendants() {
    for _ in 0..KILL_ROUNDS {
        let alive: Vec<u32> = descendants()
            .into_iter()
            .filter(|pid| !is_zombie(*pid))
            .collect();
        if alive.is_empty() {
            return;
        }
        signal_through_pidfds(&alive, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| {
            let rest = text.rsplit_once(')')?.1.to_string();
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(true)
}
