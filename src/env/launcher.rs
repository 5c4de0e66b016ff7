//! The MCP launcher seam: how a node starts a stdio MCP server or reaches an HTTP one.
//!
//! Production launches real child processes, each in its own process group under a
//! small supervisor (`mcpfleet supervise`, see `supervise`) that takes the whole group
//! down when the node dies, even by SIGKILL. The simulator supplies in-process servers
//! through the same trait. Nothing else in the node spawns processes.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::secrets::{env_place, header_place, open_all};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};

use super::isolation::{self, Isolation};
use crate::registry::Transport;

/// Lines of a server's stderr kept for its last error.
const STDERR_TAIL_LINES: usize = 5;
/// Longest stderr line kept, in bytes.
const STDERR_LINE_BYTES: usize = 300;
/// How often the supervisor checks that the node that started it is still alive.
const PARENT_CHECK_INTERVAL_MS: u64 = 200;
/// How long the supervisor gives its server after SIGTERM before SIGKILL.
const SUPERVISOR_GRACE_MS: u64 = 5_000;
/// Exit code of a supervisor whose command could not be started (as a shell does).
const EXIT_CANNOT_START: i32 = 127;

pub type BoxedReader = Pin<Box<dyn AsyncRead + Send>>;
pub type BoxedWriter = Pin<Box<dyn AsyncWrite + Send>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start {command:?}: {reason}")]
    Spawn { command: String, reason: String },
}

/// How to speak MCP to a launched server.
pub enum McpIo {
    /// Newline-delimited JSON-RPC over a pair of byte streams (a child's stdout/stdin).
    Streams {
        reader: BoxedReader,
        writer: BoxedWriter,
    },
    /// A streamable-HTTP endpoint.
    Http {
        url: String,
        headers: std::collections::BTreeMap<String, String>,
    },
}

/// A running server process.
#[async_trait]
pub trait ServerProcess: Send {
    /// Resolves when the process has exited, with how it ended ("exit code 1: <stderr>").
    async fn exited(&mut self) -> String;
    /// Stops the whole process group: SIGTERM, then SIGKILL after `grace`.
    async fn stop(&mut self, grace: Duration);
}

pub struct Launched {
    pub io: McpIo,
    /// `None` for servers the node only connects to.
    pub process: Option<Box<dyn ServerProcess>>,
}

/// Which replica a launch is for: slot `slot` of the incarnation of `server` created at
/// `create_revision` (a server deleted and added again is a new incarnation).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId {
    pub server: String,
    pub create_revision: u64,
    pub slot: u32,
}

/// Until when a replica may run: the node's lease plus the fence grace. The node
/// renews it with every lease; once it has passed, whatever runs the replica's process
/// (its supervisor) kills it, even when the node itself is paused or stalled.
pub type Fence = tokio::sync::watch::Receiver<Option<tokio::time::Instant>>;

#[async_trait]
pub trait McpLauncher: Send + Sync + 'static {
    async fn launch(
        &self,
        replica: &ReplicaId,
        transport: &Transport,
        fence: Fence,
    ) -> Result<Launched, LaunchError>;
}

/// Launches real processes. With `supervisor` (the path of the `mcpfleet` binary),
/// every server runs under `mcpfleet supervise`, which outlives no node. Each server
/// runs as `isolation` says (src/env/isolation.rs).
pub struct ProcessLauncher {
    pub supervisor: Option<PathBuf>,
    pub isolation: Isolation,
    /// Opens the spec's sealed env values and headers, which only a launch sees in
    /// clear (`crate::secrets`).
    pub secrets: Option<std::sync::Arc<crate::secrets::SecretsKey>>,
}

#[async_trait]
impl McpLauncher for ProcessLauncher {
    async fn launch(
        &self,
        replica: &ReplicaId,
        transport: &Transport,
        fence: Fence,
    ) -> Result<Launched, LaunchError> {
        let key = self.secrets.as_deref();
        let (command, args, env, cwd) = match transport {
            Transport::Http { url, headers } => {
                let headers =
                    open_all(key, &replica.server, headers, header_place).map_err(|e| {
                        LaunchError::Spawn {
                            command: url.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                return Ok(Launched {
                    io: McpIo::Http {
                        url: url.clone(),
                        headers,
                    },
                    process: None,
                });
            }
            Transport::Stdio {
                command,
                args,
                env,
                cwd,
            } => (command, args, env, cwd),
        };
        let spawn_error = |reason: String| LaunchError::Spawn {
            command: command.clone(),
            reason,
        };
        let env = &open_all(key, &replica.server, env, env_place)
            .map_err(|e| spawn_error(e.to_string()))?;
        // The pipe through which the node renews the supervisor's deadline; the
        // supervisor reads it as fd FENCE_FD.
        let fence_pipe = match &self.supervisor {
            Some(_) => Some(FencePipe::new().map_err(|e| spawn_error(e.to_string()))?),
            None => None,
        };
        let mut builder = match &self.supervisor {
            Some(supervisor) => {
                let mut builder = tokio::process::Command::new(supervisor);
                builder
                    .arg("supervise")
                    .arg("--fence-fd")
                    .arg(FENCE_FD.to_string())
                    .args(self.isolation.supervisor_args())
                    .arg("--")
                    .arg(command);
                builder
            }
            None => tokio::process::Command::new(command),
        };
        // A cleared environment: the variables the isolation passes, then the spec's.
        let node_env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        builder
            .args(args)
            .env_clear()
            .envs(self.isolation.environment(node_env, env))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = cwd {
            builder.current_dir(cwd);
        }
        let parent = std::process::id() as libc::pid_t;
        // A supervisor needs time to take its group down; a bare server just dies.
        let death_signal = if self.supervisor.is_some() {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        let fence_read = fence_pipe.as_ref().map(|pipe| pipe.read);
        // Unsupervised, the server takes its limits and user here; a supervisor stays
        // as it is and gives them to the server it starts.
        let (rlimits, user) = match &self.supervisor {
            Some(_) => (Vec::new(), None),
            None => (
                isolation::rlimits(&self.isolation.limits, false, false),
                self.isolation.user.as_ref().map(|u| (u.uid, u.gid)),
            ),
        };
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            builder.pre_exec(move || {
                if let Some(read) = fence_read {
                    // dup2 clears close-on-exec on the copy; the original closes on exec.
                    if read == FENCE_FD {
                        let flags = libc::fcntl(read, libc::F_GETFD);
                        libc::fcntl(read, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                    } else if libc::dup2(read, FENCE_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Its own process group, so that stopping it reaches its children too.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                isolation::enter(&rlimits, user)?;
                // Die with the node (after the user change, which clears the setting) (the signal comes when the node's thread exits; the
                // node spawns from its one runtime thread, which lives as long as it).
                libc::prctl(libc::PR_SET_PDEATHSIG, death_signal);
                if libc::getppid() != parent {
                    libc::_exit(EXIT_CANNOT_START);
                }
                Ok(())
            });
        }
        if let Some(cwd) = cwd {
            if !std::path::Path::new(cwd).is_dir() {
                return Err(spawn_error(format!(
                    "working directory {cwd:?} does not exist"
                )));
            }
        }
        let mut child = builder.spawn().map_err(|e| spawn_error(e.to_string()))?;
        // The node keeps only the write end; the supervisor has its copy of the read end.
        let fence_writer = fence_pipe.map(FencePipe::into_writer);
        let fence_task = fence_writer.map(|writer| tokio::spawn(renew_fence(writer, fence)));
        let (Some(stdout), Some(stdin), Some(stderr)) =
            (child.stdout.take(), child.stdin.take(), child.stderr.take())
        else {
            return Err(spawn_error("its stdio could not be captured".into()));
        };
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        tokio::spawn(keep_stderr_tail(stderr, tail.clone()));
        let pgid = child.id().map(|id| id as libc::pid_t);
        Ok(Launched {
            io: McpIo::Streams {
                reader: Box::pin(stdout),
                writer: Box::pin(stdin),
            },
            process: Some(Box::new(ChildProcess {
                child,
                pgid,
                tail,
                exit: None,
                supervised: self.supervisor.is_some(),
                fence_task,
            })),
        })
    }
}

/// Reads a server's stderr to the end (so it never blocks on a full pipe), keeping the
/// last few lines. However long a line is, at most `STDERR_LINE_BYTES` of it are held
/// (the rest is skipped, and the kept part ends in "..."); bytes that are not UTF-8
/// become U+FFFD. (tokio's line readers would either hold a whole line or stop reading
/// at the first invalid byte, and a server that is not read blocks.)
async fn keep_stderr_tail(stderr: impl AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<String>>>) {
    let keep = |line: &[u8], cut: bool| {
        let mut text = String::from_utf8_lossy(line).into_owned();
        crate::registry::truncate_utf8(&mut text, STDERR_LINE_BYTES);
        if cut {
            text.push_str("...");
        }
        tracing::debug!(target: "mcpfleet::mcp_stderr", "{text}");
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text);
        }
    };
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::with_capacity(STDERR_LINE_BYTES);
    let mut cut = false;
    loop {
        let buffer = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buffer) => buffer,
        };
        let newline = buffer.iter().position(|b| *b == b'\n');
        let chunk = &buffer[..newline.unwrap_or(buffer.len())];
        let room = STDERR_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        cut |= chunk.len() > room;
        let used = newline.map_or(buffer.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            keep(&line, cut);
            line.clear();
            cut = false;
        }
    }
    if !line.is_empty() {
        keep(&line, cut);
    }
}

struct ChildProcess {
    child: tokio::process::Child,
    pgid: Option<libc::pid_t>,
    tail: Arc<Mutex<VecDeque<String>>>,
    exit: Option<String>,
    /// Runs under `mcpfleet supervise` (whose cgroup the node cleans up after it).
    supervised: bool,
    /// Renews the supervisor's deadline; holds the pipe's write end.
    fence_task: Option<tokio::task::JoinHandle<()>>,
}

impl ChildProcess {
    fn signal_group(&self, signal: libc::c_int) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) with a negative pid signals a process group; ESRCH (the
            // group is gone) is fine.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }

    fn describe(&self, status: std::io::Result<std::process::ExitStatus>) -> String {
        use std::os::unix::process::ExitStatusExt;
        let how = match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "exited".to_string(),
            },
            Err(error) => format!("could not be waited for: {error}"),
        };
        let tail: Vec<String> = self
            .tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        if tail.is_empty() {
            format!("process {how}")
        } else {
            format!("process {how}: {}", tail.join(" | "))
        }
    }
}

#[async_trait]
impl ServerProcess for ChildProcess {
    async fn exited(&mut self) -> String {
        if let Some(exit) = &self.exit {
            return exit.clone();
        }
        let supervisor = self.child.id();
        let status = self.child.wait().await;
        self.reap_cgroup(supervisor).await;
        // Let the stderr reader take the last lines the process wrote.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let exit = self.describe(status);
        self.exit = Some(exit.clone());
        exit
    }

    async fn stop(&mut self, grace: Duration) {
        if self.exit.is_some() {
            // Already exited and reaped: its process group id may belong to someone
            // else by now, so it gets no signal. (The supervisor cleans its own group.)
            return;
        }
        // Not reaped yet, so the group id is still this server's.
        let supervisor = self.child.id();
        self.signal_group(libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait().await;
        }
        self.reap_cgroup(supervisor).await;
        self.exit = Some("stopped".to_string());
    }
}

impl ChildProcess {
    /// A supervisor that has exited may have been killed before it could end its
    /// cgroup: whatever is left there goes now.
    async fn reap_cgroup(&self, supervisor: Option<u32>) {
        if let (true, Some(pid)) = (self.supervised, supervisor) {
            super::process_tree::reap_replica_cgroup(pid).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(task) = self.fence_task.take() {
            task.abort();
        }
        if self.exit.is_none() {
            // Dropped without a stop (a start given up half-way): kill it now, the
            // supervisor with its group, and what escaped the group with the cgroup.
            let supervisor = self.child.id();
            self.signal_group(libc::SIGKILL);
            if let (true, Some(pid)) = (self.supervised, supervisor) {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(super::process_tree::reap_replica_cgroup(pid));
                }
            }
        }
    }
}

/// The file descriptor on which a supervisor reads its deadlines.
pub const FENCE_FD: libc::c_int = 3;

/// A pipe from the node to one supervisor, both ends close-on-exec.
struct FencePipe {
    read: libc::c_int,
    write: libc::c_int,
}

impl FencePipe {
    fn new() -> std::io::Result<FencePipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FencePipe {
            read: fds[0],
            write: fds[1],
        })
    }

    /// Closes the read end (the supervisor has its own copy) and returns the write end,
    /// non-blocking: a supervisor that does not read never stalls the node.
    fn into_writer(self) -> std::fs::File {
        use std::os::fd::FromRawFd;
        let (read, write) = (self.read, self.write);
        std::mem::forget(self);
        // SAFETY: both descriptors are ours; `write` is handed to the File.
        unsafe {
            libc::close(read);
            let flags = libc::fcntl(write, libc::F_GETFL);
            libc::fcntl(write, libc::F_SETFL, flags | libc::O_NONBLOCK);
            std::fs::File::from_raw_fd(write)
        }
    }
}

impl Drop for FencePipe {
    fn drop(&mut self) {
        // SAFETY: closing descriptors we own (only reached when never handed over).
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

/// Now on the host's monotonic clock (CLOCK_MONOTONIC, which every process of the host
/// shares and which runs on while a process is stopped), in nanoseconds.
fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Writes every new deadline of `fence` to the supervisor, as an absolute time on the
/// host's monotonic clock, so that no delay in delivering it can extend it.
async fn renew_fence(mut writer: std::fs::File, mut fence: Fence) {
    use std::io::Write;
    loop {
        let deadline = *fence.borrow_and_update();
        let now = tokio::time::Instant::now();
        let left = deadline.map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        let at = monotonic_now_ns().saturating_add(left.as_nanos() as u64);
        // One short line is written whole or not at all (PIPE_BUF); a full pipe means
        // the supervisor has older deadlines to read, and the next renewal follows.
        let _ = writer.write_all(format!("{at}\n").as_bytes());
        if fence.changed().await.is_err() {
            // The node no longer renews: keep the pipe open (its end tells the
            // supervisor the node is gone) and let the last deadline stand.
            std::future::pending::<()>().await;
        }
    }
}

/// Why a supervisor ends its server.
enum SupervisorStop {
    /// The node told it to (SIGTERM, SIGINT) or is gone: SIGTERM, then SIGKILL after the
    /// grace, but never later than the deadline.
    Graceful,
    /// The node's deadline passed: SIGKILL at once.
    Deadline,
}

/// `mcpfleet supervise [--fence-fd FD] -- COMMAND ARGS...`: runs COMMAND (in the
/// supervisor's process group, its own cgroup where cgroup v2 allows, as a child
/// subreaper) with the supervisor's stdio, and takes the whole tree down:
/// - when the deadline the node renews on FD passes: SIGKILL at once, whatever the node
///   is doing (paused, stalled on disk). This is the fence;
/// - when told to stop (SIGTERM, SIGINT), or when the node is gone (FD closes, or the
///   parent changes): SIGTERM, then SIGKILL after a grace that never runs past the
///   deadline;
/// - when COMMAND exits: whatever it left behind (daemons included) goes too.
///
/// Returns the exit code.
pub async fn supervise(
    command: &str,
    args: &[String],
    fence_fd: Option<i32>,
    user: Option<(u32, u32)>,
    limits: isolation::Limits,
) -> i32 {
    use super::process_tree::{self, ReplicaCgroup};
    use tokio::signal::unix::{signal, SignalKind};
    let parent = std::os::unix::process::parent_id();
    // Handle the signals before anything runs: the node's death (PDEATHSIG) must never
    // kill the supervisor before it has taken its tree down.
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("mcpfleet supervise: cannot handle signals");
        return 1;
    };
    let mut fence = match fence_fd.map(open_fence) {
        Some(Ok(fence)) => Some(fence),
        Some(Err(error)) => {
            eprintln!("mcpfleet supervise: cannot read the fence: {error}");
            return 1;
        }
        None => None,
    };
    // Until the node's first deadline arrives (it writes one right after the spawn),
    // the server does not start.
    let mut deadline = None;
    if let Some(lines) = fence.as_mut() {
        match tokio::time::timeout(
            Duration::from_millis(FIRST_DEADLINE_WAIT_MS),
            lines.next_line(),
        )
        .await
        {
            Ok(Ok(Some(line))) => deadline = parse_deadline(&line),
            _ => {
                eprintln!("mcpfleet supervise: no deadline from the node");
                return 1;
            }
        }
    }
    process_tree::become_subreaper();
    let cgroup = ReplicaCgroup::create();
    let mut builder = tokio::process::Command::new(command);
    builder.args(args);
    let procs = cgroup.as_ref().and_then(|c| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(c.procs_file())
            .ok()
    });
    let procs_fd = procs.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    // The group carries the memory and process limits where its controllers allow;
    // rlimits carry the rest.
    let in_group = |file: &str, value: Option<u64>| match (&cgroup, value) {
        (Some(cgroup), Some(value)) => cgroup.set_limit(file, value),
        _ => false,
    };
    let rlimits = isolation::rlimits(
        &limits,
        in_group("memory.max", limits.memory_bytes),
        in_group("pids.max", limits.processes),
    );
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        builder.pre_exec(move || {
            // Into the replica's cgroup before it can start anything.
            if let Some(fd) = procs_fd {
                libc::write(fd, b"0".as_ptr().cast(), 1);
            }
            isolation::enter(&rlimits, user)?;
            // Without cgroups, the server at least dies with a supervisor killed by
            // SIGKILL (set after the user change, which clears it).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match builder.spawn() {
        Ok(child) => child,
        Err(error) => {
            eprintln!("mcpfleet supervise: cannot start {command:?}: {error}");
            if let Some(cgroup) = &cgroup {
                cgroup.kill().await;
            }
            return EXIT_CANNOT_START;
        }
    };
    drop(procs);
    let mut check = tokio::time::interval(Duration::from_millis(PARENT_CHECK_INTERVAL_MS));
    let stop = loop {
        let until =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            status = child.wait() => {
                // Whatever the server left behind goes too.
                kill_tree(cgroup.as_ref(), libc::SIGTERM).await;
                tokio::time::sleep(Duration::from_millis(LEFTOVER_GRACE_MS)).await;
                kill_tree(cgroup.as_ref(), libc::SIGKILL).await;
                return match status {
                    Ok(status) => {
                        use std::os::unix::process::ExitStatusExt;
                        status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
                    }
                    Err(_) => 1,
                };
            }
            _ = terminate.recv() => break SupervisorStop::Graceful,
            _ = interrupt.recv() => break SupervisorStop::Graceful,
            _ = tokio::time::sleep_until(until), if deadline.is_some() => {
                if crate::env::bugs::active(crate::env::bugs::Bug::IgnoreFenceDeadline) {
                    deadline = None;
                    continue;
                }
                break SupervisorStop::Deadline;
            }
            line = next_fence_line(&mut fence) => match line {
                Some(line) => {
                    if let Some(next) = parse_deadline(&line) {
                        deadline = Some(next);
                    }
                }
                // The node is gone (its end of the pipe closed with it).
                None => break SupervisorStop::Graceful,
            },
            _ = check.tick() => {
                if std::os::unix::process::parent_id() != parent {
                    break SupervisorStop::Graceful;
                }
            }
        }
    };
    if let SupervisorStop::Graceful = stop {
        kill_tree(cgroup.as_ref(), libc::SIGTERM).await;
        let grace = tokio::time::Instant::now() + Duration::from_millis(SUPERVISOR_GRACE_MS);
        let until = deadline.map_or(grace, |deadline| deadline.min(grace));
        let _ = tokio::time::timeout_at(until, child.wait()).await;
    } else {
        eprintln!("mcpfleet supervise: the node's deadline passed: killing the server");
    }
    kill_tree(cgroup.as_ref(), libc::SIGKILL).await;
    1
}

/// How long a supervisor waits for the node's first deadline.
const FIRST_DEADLINE_WAIT_MS: u64 = 5_000;
/// How long what an exited server left behind gets between SIGTERM and SIGKILL.
const LEFTOVER_GRACE_MS: u64 = 100;

type FenceLines = tokio::io::Lines<BufReader<tokio::net::unix::pipe::Receiver>>;

fn open_fence(fd: i32) -> std::io::Result<FenceLines> {
    use std::os::fd::FromRawFd;
    // SAFETY: the node handed this descriptor over for exactly this use. Close-on-exec,
    // so the server never inherits it.
    let owned = unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        std::os::fd::OwnedFd::from_raw_fd(fd)
    };
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(owned)?;
    Ok(BufReader::new(receiver).lines())
}

/// The next line from the node; `None` once its end is closed. Pending forever without
/// a fence.
async fn next_fence_line(fence: &mut Option<FenceLines>) -> Option<String> {
    match fence {
        Some(lines) => lines.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// A deadline line: nanoseconds on the host's monotonic clock.
fn parse_deadline(line: &str) -> Option<tokio::time::Instant> {
    let at: u64 = line.trim().parse().ok()?;
    let now = monotonic_now_ns();
    let now_instant = tokio::time::Instant::now();
    Some(if at >= now {
        now_instant + Duration::from_nanos(at - now)
    } else {
        now_instant
    })
}

/// Signals the supervisor's whole tree: its cgroup, or every descendant and the group.
async fn kill_tree(cgroup: Option<&super::process_tree::ReplicaCgroup>, signal: libc::c_int) {
    use super::process_tree;
    match (cgroup, signal) {
        (Some(cgroup), libc::SIGKILL) => cgroup.kill().await,
        _ => {
            if signal == libc::SIGKILL {
                process_tree::kill_descendants();
            } else {
                process_tree::signal_descendants(signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stderr_lines_of_any_length_or_encoding_are_kept_short_and_read_to_the_end() {
        let mut stderr = vec![b'x'; 4 * 1024 * 1024];
        stderr.extend_from_slice(b"\nbad \xff\xfe bytes\n");
        for n in 0..10 {
            stderr.extend_from_slice(format!("line {n}\n").as_bytes());
        }
        stderr.extend_from_slice(b"last words, no newline");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        keep_stderr_tail(stderr.as_slice(), tail.clone()).await;
        let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
        assert_eq!(
            tail,
            [
                "line 6",
                "line 7",
                "line 8",
                "line 9",
                "last words, no newline"
            ]
        );

        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut stderr = vec![b'y'; 100_000];
        stderr.extend_from_slice(b"\nbad \xff bytes\n");
        keep_stderr_tail(stderr.as_slice(), tail.clone()).await;
        let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[0], format!("{}...", "y".repeat(STDERR_LINE_BYTES)));
        assert_eq!(tail[1], "bad \u{fffd} bytes");
    }
}
