//! Checks of the configuration against the host's user and group database,
//! made when a config file is loaded (not by [`super::Config::parse`], so
//! that parsing stays a pure function of the text).

use std::ffi::CString;

use nix::unistd::{getgrouplist, Gid, Group, Uid, User};

use super::{AgentConfig, Config};

/// The gids an agent's processes hold: its primary group (or the `group`
/// override) and every supplementary group of its user (getgrouplist, i.e.
/// /etc/group members). None for an unknown user or group: spawning refuses
/// those with its own error.
fn agent_gids(a: &AgentConfig) -> Option<(String, Vec<u32>)> {
    let spec = a.user.get_ref();
    let user = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
        Err(_) => User::from_name(spec).ok().flatten(),
    };
    let (name, primary) = match (user, spec.parse::<u32>()) {
        (Some(u), _) => (u.name, u.gid.as_raw()),
        (None, Ok(uid)) => (spec.clone(), uid),
        (None, Err(_)) => return None,
    };
    let gid = match &a.group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Group::from_name(g).ok().flatten()?.gid.as_raw(),
        },
    };
    let mut gids = vec![gid, primary];
    if let Ok(c) = CString::new(name.as_bytes()) {
        if let Ok(list) = getgrouplist(&c, Gid::from_raw(gid)) {
            gids.extend(list.into_iter().map(|g| g.as_raw()));
        }
    }
    gids.sort_unstable();
    gids.dedup();
    Some((name, gids))
}

/// Refuses a `socket_group` that any agent belongs to: a member of that
/// group can open the control socket and halt, resume, approve or issue
/// credentials, which no agent may do. A group that does not exist makes the
/// socket root-only and is fine.
pub fn check_socket_group(cfg: &Config) -> Result<(), String> {
    let Some(group) = Group::from_name(&cfg.socket_group).ok().flatten() else {
        return Ok(());
    };
    let sg = group.gid.as_raw();
    for a in &cfg.agents {
        let Some((user, gids)) = agent_gids(a) else {
            continue;
        };
        let by_member = group.mem.contains(&user);
        if gids.contains(&sg) || by_member {
            return Err(format!(
                "socket_group {:?} (gid {sg}) is a group of agent {} (user {user:?}{}): its members may use the control socket, so an agent could halt, resume or approve; give the agent another user or group, or choose another socket_group",
                cfg.socket_group,
                a.name(),
                a.group
                    .as_ref()
                    .map(|g| format!(", group {g:?}"))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// Refuses a config file that other users can read while an agent has an
/// `env` table: those values are often secrets, and agents run as other
/// users. The package installs it 0640 root:warden.
pub fn check_file_mode(cfg: &Config, mode: u32) -> Result<(), String> {
    if mode & 0o004 == 0 {
        return Ok(());
    }
    match cfg.agents.iter().find(|a| !a.env.is_empty()) {
        Some(a) => Err(format!(
            "is readable by every user (mode {:04o}) and agent {} has an env table, which other agents could read; chmod o-r it (the package installs it 0640 root:warden)",
            mode & 0o7777,
            a.name()
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(top: &str, agent: &str) -> Config {
        let text = format!("{top}\n[[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\n{agent}\n");
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn socket_group_of_an_agent_is_refused_naming_both() {
        // nobody's primary group is nogroup (Debian) or nobody (others).
        let nobody = User::from_name("nobody").unwrap().unwrap();
        let g = Group::from_gid(nobody.gid).unwrap().unwrap();
        let c = cfg(&format!("socket_group = {:?}", g.name), "user = \"nobody\"");
        let e = check_socket_group(&c).unwrap_err();
        assert!(e.contains(&g.name) && e.contains("agent a"), "{e}");
        // The same group through a `group` override.
        let c = cfg(
            &format!("socket_group = {:?}", g.name),
            &format!("user = \"root\"\nallow_root = true\ngroup = {:?}", g.name),
        );
        assert!(check_socket_group(&c).is_err());
        // A group the agent is not in, and a group that does not exist.
        let c = cfg("socket_group = \"root\"", "user = \"nobody\"");
        assert!(check_socket_group(&c).is_ok());
        let c = cfg("socket_group = \"no-such-group-x\"", "user = \"nobody\"");
        assert!(check_socket_group(&c).is_ok());
    }

    #[test]
    fn world_readable_config_with_env_is_refused() {
        let c = cfg("", "env = { TOKEN = \"s\" }");
        assert!(check_file_mode(&c, 0o100644)
            .unwrap_err()
            .contains("agent a"));
        assert!(check_file_mode(&c, 0o100640).is_ok());
        let c = cfg("", "");
        assert!(check_file_mode(&c, 0o100644).is_ok());
    }
}
