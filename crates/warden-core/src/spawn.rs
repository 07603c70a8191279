//! Turning an agent's configuration into a running, confined process.
//!
//! This side resolves users, builds the environment and opens descriptors;
//! [`crate::sys::exec`] forks and performs each confinement step in the child.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::cgroup::Cgroup;
use crate::config::AgentConfig;
use crate::sys::exec::{self, ExecPlan};

pub const AGENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("agent {agent}: unknown user {user:?}")]
    UnknownUser { agent: String, user: String },
    #[error("agent {agent}: unknown group {group:?}")]
    UnknownGroup { agent: String, group: String },
    #[error("agent {agent}: user {user:?} is root; set allow_root = true to allow it")]
    RootNotAllowed { agent: String, user: String },
    #[error("agent {agent}: group {group:?} is gid 0 (root); set allow_root = true to allow it")]
    RootGroupNotAllowed { agent: String, group: String },
    #[error("agent {agent}: {what}: {source}")]
    Io {
        agent: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("agent {agent}: {source}")]
    Cgroup {
        agent: String,
        source: crate::cgroup::CgroupError,
    },
    #[error("agent {agent}: {source}")]
    Exec {
        agent: String,
        source: exec::ExecError,
    },
    #[error("agent {agent}: {source}")]
    Confine {
        agent: String,
        source: crate::confine::ConfineError,
    },
    #[error("agent {agent}: network = \"isolated\" needs the namespace the daemon sets up")]
    NoNetwork { agent: String },
    #[error("agent {agent}: {what} contains a NUL byte")]
    Nul { agent: String, what: &'static str },
    #[error("agent {agent}: empty command")]
    EmptyCommand { agent: String },
}

/// Who an agent runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub user: String,
    pub home: String,
}

/// Resolves the agent's user and group, enforcing `allow_root`.
pub fn resolve_identity(a: &AgentConfig) -> Result<Identity, SpawnError> {
    use nix::unistd::{Gid, Group, Uid, User};
    let name = a.name().to_string();
    let spec = a.user.get_ref();
    let unknown = || SpawnError::UnknownUser {
        agent: name.clone(),
        user: spec.clone(),
    };
    let user = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
        Err(_) => User::from_name(spec).ok().flatten(),
    };
    let (uid, mut gid, uname, home) = match (user, spec.parse::<u32>()) {
        (Some(u), _) => (
            u.uid.as_raw(),
            u.gid.as_raw(),
            u.name.clone(),
            u.dir.to_string_lossy().into_owned(),
        ),
        // A numeric uid without a passwd entry is allowed: its group is itself.
        (None, Ok(uid)) => (uid, uid, spec.clone(), "/".to_string()),
        (None, Err(_)) => return Err(unknown()),
    };
    if uid == 0 && !a.allow_root {
        return Err(SpawnError::RootNotAllowed {
            agent: name,
            user: spec.clone(),
        });
    }
    if let Some(g) = &a.group {
        let grp = match g.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => Group::from_name(g).ok().flatten().map(|g| g.gid.as_raw()),
        };
        gid = grp.ok_or_else(|| SpawnError::UnknownGroup {
            agent: name.clone(),
            group: g.clone(),
        })?;
        if gid == 0 && !a.allow_root {
            return Err(SpawnError::RootGroupNotAllowed {
                agent: name,
                group: g.clone(),
            });
        }
    }
    let groups = CString::new(uname.as_bytes())
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, Gid::from_raw(gid)).ok())
        .map(|v| v.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|| vec![gid]);
    Ok(Identity {
        uid,
        gid,
        groups,
        user: uname,
        home,
    })
}

/// The agent's complete environment: a clean base plus its `env` table.
pub fn environment(a: &AgentConfig, id: &Identity) -> Vec<(String, String)> {
    let mut env = std::collections::BTreeMap::new();
    env.insert("PATH".to_string(), AGENT_PATH.to_string());
    env.insert("HOME".to_string(), id.home.clone());
    env.insert("USER".to_string(), id.user.clone());
    env.insert("LOGNAME".to_string(), id.user.clone());
    env.insert("LANG".to_string(), "C.UTF-8".to_string());
    env.insert("WARDEN_AGENT".to_string(), a.name().to_string());
    for (k, v) in &a.env {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// Highest capability number the kernel knows.
pub fn cap_last() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

fn cstring(agent: &str, what: &'static str, b: &[u8]) -> Result<CString, SpawnError> {
    CString::new(b).map_err(|_| SpawnError::Nul {
        agent: agent.to_string(),
        what,
    })
}

/// A started agent: its pid and the read ends of its output.
#[derive(Debug)]
pub struct Started {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Starts the agent inside `cgroup`. The child joins the cgroup before it runs
/// any of the agent's code. With `network = "none"` it makes its own empty
/// network namespace; `isolated` needs the daemon's namespace ([`start_in`]).
pub fn start(
    a: &AgentConfig,
    cgroup: &dyn Cgroup,
    extra_env: &[(String, String)],
) -> Result<Started, SpawnError> {
    let netns = match a.network {
        crate::config::NetworkMode::Host => exec::NetNs::Host,
        crate::config::NetworkMode::None => exec::NetNs::New,
        crate::config::NetworkMode::Isolated => {
            return Err(SpawnError::NoNetwork {
                agent: a.name().to_string(),
            })
        }
    };
    start_in(a, cgroup, extra_env, netns)
}

/// [`start`] in the network namespace `netns`.
pub fn start_in(
    a: &AgentConfig,
    cgroup: &dyn Cgroup,
    extra_env: &[(String, String)],
    netns: exec::NetNs,
) -> Result<Started, SpawnError> {
    let confine = match a.exec {
        crate::config::ExecMode::Free => None,
        crate::config::ExecMode::Brokered => {
            let err = |source| SpawnError::Confine {
                agent: a.name().to_string(),
                source,
            };
            let mut write: Vec<std::path::PathBuf> = a.write_paths.clone();
            write.extend(a.cwd.iter().cloned());
            let mut spec = crate::confine::ConfineSpec::for_program(
                Path::new(&a.command.get_ref()[0]),
                &write,
            )
            .map_err(err)?;
            spec.read.extend(a.read_paths.iter().cloned());
            Some(crate::confine::prepare(&spec).map_err(err)?)
        }
    };
    launch(a, cgroup, a.command.get_ref(), extra_env, confine, netns)
}

/// Starts a tool the broker allowed, for agent `a`: as the agent's user, in
/// the agent's cgroup (so its limits and the halt ladder cover the tool) and
/// in `netns` (the agent's network namespace), with the agent's working
/// directory and environment, but not its brokered-mode confinement: running
/// what the agent may not run itself is the broker's whole point. `argv[0]`
/// is the tool's absolute program.
pub fn start_tool(
    a: &AgentConfig,
    cgroup: &dyn Cgroup,
    argv: &[String],
    extra_env: &[(String, String)],
    netns: exec::NetNs,
) -> Result<Started, SpawnError> {
    launch(a, cgroup, argv, extra_env, None, netns)
}

fn launch(
    a: &AgentConfig,
    cgroup: &dyn Cgroup,
    command: &[String],
    extra_env: &[(String, String)],
    confine: Option<crate::confine::Prepared>,
    netns: exec::NetNs,
) -> Result<Started, SpawnError> {
    let name = a.name().to_string();
    let io = |what: &'static str| {
        let agent = name.clone();
        move |source| SpawnError::Io {
            agent,
            what,
            source,
        }
    };
    let id = resolve_identity(a)?;
    let argv = command
        .iter()
        .map(|s| cstring(&name, "command", s.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    if argv.is_empty() {
        return Err(SpawnError::EmptyCommand { agent: name });
    }
    // warden's own variables (the agent socket) win over the config's.
    let mut env: std::collections::BTreeMap<String, String> =
        environment(a, &id).into_iter().collect();
    env.extend(extra_env.iter().cloned());
    let envp = env
        .into_iter()
        .map(|(k, v)| cstring(&name, "env", format!("{k}={v}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = a.cwd.as_deref().unwrap_or(Path::new("/"));
    let cwd = cstring(&name, "cwd", cwd.as_os_str().as_bytes())?;
    let cgroup_procs = cgroup.join_fds().map_err(|source| SpawnError::Cgroup {
        agent: name.clone(),
        source,
    })?;
    let stdin = std::fs::File::open("/dev/null").map_err(io("open /dev/null"))?;
    let (out_r, out_w) = crate::sys::pipe_cloexec().map_err(io("create stdout pipe"))?;
    let (err_r, err_w) = crate::sys::pipe_cloexec().map_err(io("create stderr pipe"))?;
    let mut rlimits = vec![
        (libc::RLIMIT_NOFILE, a.rlimits.nofile, a.rlimits.nofile),
        (libc::RLIMIT_CORE, a.rlimits.core, a.rlimits.core),
    ];
    if let Some(n) = a.rlimits.nproc {
        rlimits.push((libc::RLIMIT_NPROC, n, n));
    }
    if let Some(n) = a.rlimits.fsize {
        rlimits.push((libc::RLIMIT_FSIZE, n.0, n.0));
    }
    let plan = ExecPlan {
        confine,
        netns,
        path: argv[0].clone(),
        argv,
        envp,
        cgroup_procs,
        stdin: stdin.into(),
        stdout: out_w,
        stderr: err_w,
        uid: id.uid,
        gid: id.gid,
        groups: id.groups.clone(),
        cwd,
        umask: a.umask_bits(),
        rlimits,
        cap_last: cap_last(),
    };
    let pid = exec::spawn(plan).map_err(|source| SpawnError::Exec {
        agent: name.clone(),
        source,
    })?;
    Ok(Started {
        pid,
        stdout: out_r,
        stderr: err_r,
    })
}
