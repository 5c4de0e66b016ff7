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
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};

use crate::registry::Transport;

/// Lines of a server's stderr kept for its last error.
const STDERR_TAIL_LINES: usize = 5;
/// Longest stderr line kept, in bytes.
const STDERR_LINE_BYTES: usize = 300;
/// How often the supervisor checks that the node that started it is still alive.
const PARENT_CHECK_INTERVAL_MS: u64 = 200;
/// How long the supervisor gives its server after SIGTERM before SIGKILL.
const SUPERVISOR_GRACE_MS: u64 = 2_000;
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

#[async_trait]
pub trait McpLauncher: Send + Sync + 'static {
    async fn launch(
        &self,
        replica: &ReplicaId,
        transport: &Transport,
    ) -> Result<Launched, LaunchError>;
}

/// Launches real processes. With `supervisor` (the path of the `mcpfleet` binary),
/// every server runs under `mcpfleet supervise`, which outlives no node.
pub struct ProcessLauncher {
    pub supervisor: Option<PathBuf>,
}

#[async_trait]
impl McpLauncher for ProcessLauncher {
    async fn launch(
        &self,
        _replica: &ReplicaId,
        transport: &Transport,
    ) -> Result<Launched, LaunchError> {
        let (command, args, env, cwd) = match transport {
            Transport::Http { url, headers } => {
                return Ok(Launched {
                    io: McpIo::Http {
                        url: url.clone(),
                        headers: headers.clone(),
                    },
                    process: None,
                })
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
        let mut builder = match &self.supervisor {
            Some(supervisor) => {
                let mut builder = tokio::process::Command::new(supervisor);
                builder.arg("supervise").arg("--").arg(command);
                builder
            }
            None => tokio::process::Command::new(command),
        };
        builder
            .args(args)
            .envs(env)
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
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            builder.pre_exec(move || {
                // Its own process group, so that stopping it reaches its children too.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Die with the node (the signal comes when the node's thread exits; the
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
            })),
        })
    }
}

/// Reads a server's stderr to the end (so it never blocks on a full pipe), keeping the
/// last few lines.
async fn keep_stderr_tail(stderr: tokio::process::ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        tracing::debug!(target: "mcpfleet::mcp_stderr", "{line}");
        crate::registry::truncate_utf8(&mut line, STDERR_LINE_BYTES);
        let Ok(mut tail) = tail.lock() else { return };
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

struct ChildProcess {
    child: tokio::process::Child,
    pgid: Option<libc::pid_t>,
    tail: Arc<Mutex<VecDeque<String>>>,
    exit: Option<String>,
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
        let status = self.child.wait().await;
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
        self.signal_group(libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait().await;
        }
        self.exit = Some("stopped".to_string());
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.signal_group(libc::SIGKILL);
        }
    }
}

/// `mcpfleet supervise -- COMMAND ARGS...`: runs COMMAND in the supervisor's process
/// group with the supervisor's stdio, and takes the whole group down when told to stop
/// (SIGTERM, SIGINT) or when the node that started it is gone. Returns the exit code.
pub async fn supervise(command: &str, args: &[String]) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let parent = std::os::unix::process::parent_id();
    // Handle the signals before anything runs: the node's death (PDEATHSIG) must never
    // kill the supervisor before it has taken its group down.
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("mcpfleet supervise: cannot handle signals");
        return 1;
    };
    let mut child = match tokio::process::Command::new(command).args(args).spawn() {
        Ok(child) => child,
        Err(error) => {
            eprintln!("mcpfleet supervise: cannot start {command:?}: {error}");
            return EXIT_CANNOT_START;
        }
    };
    let mut check = tokio::time::interval(Duration::from_millis(PARENT_CHECK_INTERVAL_MS));
    loop {
        tokio::select! {
            status = child.wait() => {
                // Whatever the server left behind in the group is told to go too.
                // SAFETY: signalling our own process group (0); the supervisor handles
                // SIGTERM itself.
                unsafe {
                    libc::kill(0, libc::SIGTERM);
                }
                return match status {
                    Ok(status) => {
                        use std::os::unix::process::ExitStatusExt;
                        status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
                    }
                    Err(_) => 1,
                };
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = check.tick() => {
                if std::os::unix::process::parent_id() != parent {
                    break;
                }
            }
        }
    }
    // SAFETY: signalling our own process group (0).
    unsafe {
        libc::kill(0, libc::SIGTERM);
    }
    let _ = tokio::time::timeout(Duration::from_millis(SUPERVISOR_GRACE_MS), child.wait()).await;
    // SAFETY: as above; this ends the supervisor too.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
    1
}
