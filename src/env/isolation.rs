//! What a stdio server may reach on its host: the user it runs as, the environment it
//! starts with, and its resource limits.
//!
//! A server starts with a cleared environment: only the node's variables named in
//! `pass_env` (PATH, HOME and the locale by default), then its spec's `env`. So the
//! node's own secrets (tokens in its environment, cloud credentials) never reach a
//! server that was not given them. With a user, the server runs under that user's uid,
//! gid and no supplementary groups, and HOME, USER and LOGNAME are that user's. Limits
//! apply to the server and everything it starts: memory and processes through the
//! replica's cgroup where cgroup v2 allows (`memory.max`, `pids.max`), and otherwise
//! through rlimits (`RLIMIT_AS`, `RLIMIT_NPROC`, which counts every process of the
//! server's user); open files through `RLIMIT_NOFILE`.

use std::collections::BTreeMap;
use std::ffi::CString;

/// The node's variables a server gets unless told otherwise.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
];
/// mcpfleet's own switch that the supervisor reads (src/env/process_tree.rs); it is
/// passed to the supervisor whatever `pass_env` says.
const SUPERVISOR_ENV: &[&str] = &[super::process_tree::NO_CGROUP_ENV];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsolationError {
    #[error("no user {0:?} on this host")]
    NoUser(String),
    #[error("running servers as {user:?} needs root: this node runs as uid {uid}")]
    NotRoot { user: String, uid: u32 },
    #[error("{what} must be at least {min}, not {value}")]
    TooLow {
        what: &'static str,
        min: u64,
        value: u64,
    },
    #[error("invalid --user {0:?}: expected UID:GID")]
    BadUserArg(String),
}

/// The user a server runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl RunAs {
    /// The user called `user` (or with that uid) in the host's user database.
    pub fn lookup(user: &str) -> Result<RunAs, IsolationError> {
        let missing = || IsolationError::NoUser(user.to_string());
        let mut buffer = vec![0u8; 16 * 1024];
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the buffers outlive the calls; `found` points into them or is null.
        let code = unsafe {
            match user.parse::<u32>() {
                Ok(uid) => libc::getpwuid_r(
                    uid,
                    &mut entry,
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    &mut found,
                ),
                Err(_) => {
                    let name = CString::new(user).map_err(|_| missing())?;
                    libc::getpwnam_r(
                        name.as_ptr(),
                        &mut entry,
                        buffer.as_mut_ptr().cast(),
                        buffer.len(),
                        &mut found,
                    )
                }
            }
        };
        if code != 0 || found.is_null() {
            return Err(missing());
        }
        // SAFETY: getpw*_r filled `entry` with strings inside `buffer`.
        let text = |p: *const libc::c_char| unsafe {
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Ok(RunAs {
            name: text(entry.pw_name),
            uid: entry.pw_uid,
            gid: entry.pw_gid,
            home: text(entry.pw_dir),
        })
    }
}

/// Resource limits of one server (`None`: not limited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
}

/// Lowest limits accepted: below them no server starts at all.
const MIN_MEMORY_BYTES: u64 = 16 * 1024 * 1024;
const MIN_OPEN_FILES: u64 = 16;
const MIN_PROCESSES: u64 = 1;

impl Limits {
    pub fn check(&self) -> Result<(), IsolationError> {
        let checks = [
            (
                "the memory limit (bytes)",
                self.memory_bytes,
                MIN_MEMORY_BYTES,
            ),
            ("the open files limit", self.open_files, MIN_OPEN_FILES),
            ("the processes limit", self.processes, MIN_PROCESSES),
        ];
        for (what, value, min) in checks {
            if let Some(value) = value.filter(|v| *v < min) {
                return Err(IsolationError::TooLow { what, min, value });
            }
        }
        Ok(())
    }
}

/// How the node starts stdio servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    pub user: Option<RunAs>,
    /// The node's variables a server gets (besides its spec's env).
    pub pass_env: Vec<String>,
    pub limits: Limits,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            user: None,
            pass_env: DEFAULT_PASS_ENV.iter().map(|v| v.to_string()).collect(),
            limits: Limits::default(),
        }
    }
}

impl Isolation {
    /// Checks what can be checked before any server starts: the limits, and that this
    /// process may change user.
    pub fn check(&self) -> Result<(), IsolationError> {
        self.limits.check()?;
        if let Some(user) = &self.user {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            if uid != 0 && uid != user.uid {
                return Err(IsolationError::NotRoot {
                    user: user.name.clone(),
                    uid,
                });
            }
        }
        Ok(())
    }

    /// The environment a server (and its supervisor) starts with: the passed
    /// variables of `node_env`, the user's own HOME, USER and LOGNAME, then `spec`.
    pub fn environment(
        &self,
        node_env: impl IntoIterator<Item = (String, String)>,
        spec: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = node_env
            .into_iter()
            .filter(|(k, _)| {
                self.pass_env.iter().any(|p| p == k) || SUPERVISOR_ENV.contains(&k.as_str())
            })
            .collect();
        if let Some(user) = &self.user {
            for (key, value) in [
                ("HOME", &user.home),
                ("USER", &user.name),
                ("LOGNAME", &user.name),
            ] {
                if env.contains_key(key) {
                    env.insert(key.to_string(), value.clone());
                }
            }
        }
        env.extend(spec.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// The arguments that tell `mcpfleet supervise` the user and limits.
    pub fn supervisor_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(user) = &self.user {
            args.extend(["--user".to_string(), format!("{}:{}", user.uid, user.gid)]);
        }
        let limits = [
            ("--memory-bytes", self.limits.memory_bytes),
            ("--open-files", self.limits.open_files),
            ("--processes", self.limits.processes),
        ];
        for (flag, value) in limits {
            if let Some(value) = value {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args
    }
}

/// `UID:GID`, as `supervisor_args` writes it.
pub fn parse_user_arg(text: &str) -> Result<(u32, u32), IsolationError> {
    let bad = || IsolationError::BadUserArg(text.to_string());
    let (uid, gid) = text.split_once(':').ok_or_else(bad)?;
    Ok((
        uid.parse().map_err(|_| bad())?,
        gid.parse().map_err(|_| bad())?,
    ))
}

/// What the server's process does between fork and exec, in this order: its rlimits
/// (those its cgroup does not carry), then its user (no supplementary groups, then
/// the gid, then the uid). Only async-signal-safe calls.
///
/// # Safety
/// Call only in a child between fork and exec (a `pre_exec` hook).
pub unsafe fn enter(
    rlimits: &[(RlimitResource, u64)],
    user: Option<(u32, u32)>,
) -> std::io::Result<()> {
    for (resource, value) in rlimits {
        let limit = libc::rlimit {
            rlim_cur: *value as libc::rlim_t,
            rlim_max: *value as libc::rlim_t,
        };
        if libc::setrlimit(*resource, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if let Some((uid, gid)) = user {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid as libc::gid_t) != 0
            || libc::setuid(uid as libc::uid_t) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(target_env = "gnu")]
pub type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub type RlimitResource = libc::c_int;

/// The rlimits for `limits`, given which of them the replica's cgroup already carries.
/// A limit above this process's own hard limit is that hard limit: it is stricter
/// already, and raising it would need a privilege a node may not have.
pub fn rlimits(
    limits: &Limits,
    cgroup_memory: bool,
    cgroup_pids: bool,
) -> Vec<(RlimitResource, u64)> {
    let mut rlimits = wanted_rlimits(limits, cgroup_memory, cgroup_pids);
    for (resource, value) in &mut rlimits {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `current`.
        if unsafe { libc::getrlimit(*resource, &mut current) } == 0
            && current.rlim_max != libc::RLIM_INFINITY
        {
            *value = (*value).min(current.rlim_max);
        }
    }
    rlimits
}

fn wanted_rlimits(
    limits: &Limits,
    cgroup_memory: bool,
    cgroup_pids: bool,
) -> Vec<(RlimitResource, u64)> {
    let mut rlimits = Vec::new();
    if let Some(bytes) = limits.memory_bytes.filter(|_| !cgroup_memory) {
        rlimits.push((libc::RLIMIT_AS, bytes));
    }
    if let Some(count) = limits.processes.filter(|_| !cgroup_pids) {
        rlimits.push((libc::RLIMIT_NPROC, count));
    }
    if let Some(count) = limits.open_files {
        rlimits.push((libc::RLIMIT_NOFILE, count));
    }
    rlimits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_gets_the_passed_variables_the_users_home_and_its_spec() {
        let node = [
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("USER", "root"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("MCPFLEET_NO_CGROUP", "1"),
            ("LANG", "C.UTF-8"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let spec: BTreeMap<String, String> = [
            ("API_KEY".to_string(), "k".to_string()),
            ("LANG".into(), "de_DE".into()),
        ]
        .into();
        let isolation = Isolation::default();
        let env = isolation.environment(node.clone(), &spec);
        assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert_eq!(env["PATH"], "/usr/bin");
        assert_eq!(env["MCPFLEET_NO_CGROUP"], "1");
        // The spec wins over the node.
        assert_eq!(env["LANG"], "de_DE");
        assert_eq!(env["API_KEY"], "k");
        let nobody = Isolation {
            user: Some(RunAs {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534,
                home: "/nonexistent".into(),
            }),
            pass_env: vec!["PATH".into(), "HOME".into(), "USER".into()],
            limits: Limits::default(),
        };
        let env = nobody.environment(node, &BTreeMap::new());
        assert_eq!(env["HOME"], "/nonexistent");
        assert_eq!(env["USER"], "nobody");
        assert!(!env.contains_key("LANG") && !env.contains_key("LOGNAME"));
        assert_eq!(nobody.supervisor_args(), ["--user", "65534:65534"]);
        assert_eq!(parse_user_arg("65534:65534"), Ok((65534, 65534)));
        assert!(parse_user_arg("nobody").is_err());
    }

    #[test]
    fn limits_go_to_rlimits_where_the_cgroup_does_not_carry_them() {
        let limits = Limits {
            memory_bytes: Some(1 << 30),
            open_files: Some(256),
            processes: Some(64),
        };
        assert_eq!(wanted_rlimits(&limits, false, false).len(), 3);
        assert_eq!(
            wanted_rlimits(&limits, true, true),
            [(libc::RLIMIT_NOFILE, 256)]
        );
        // Never above this process's own hard limit.
        let mut own = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `own`.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) };
        let huge = Limits {
            open_files: Some(u64::MAX / 2),
            ..Limits::default()
        };
        let [(_, files)] = rlimits(&huge, false, false)[..] else {
            panic!("one rlimit")
        };
        assert!(own.rlim_max == libc::RLIM_INFINITY || files == own.rlim_max);
        assert!(Limits {
            open_files: Some(3),
            ..limits
        }
        .check()
        .is_err());
        assert!(limits.check().is_ok());
    }

    #[test]
    fn users_are_looked_up_by_name_and_by_uid() {
        let root = RunAs::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(RunAs::lookup("0").unwrap().name, "root");
        assert_eq!(
            RunAs::lookup("no-such-user-here"),
            Err(IsolationError::NoUser("no-such-user-here".into()))
        );
    }
}
