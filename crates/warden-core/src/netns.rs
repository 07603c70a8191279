//! Each agent's network namespace and, with `network = "isolated"`, its veth
//! link to the host.
//!
//! The daemon makes the namespace before the agent starts, so the agent (and
//! any tool process started later for it) joins one namespace that outlives
//! each of them: a short-lived thread unshares `CLONE_NEWNET` (it moves only
//! that thread, unshare(2)), opens `/proc/thread-self/ns/net` and an rtnetlink
//! socket there, and ends. The veth pair is created from the host namespace
//! with its peer placed straight into the agent's (`IFLA_NET_NS_FD`), and each
//! end is configured through a socket in its own namespace. The forked child
//! then only calls setns(2) on the namespace's descriptor.
//!
//! Addresses: `isolated_subnet` (default `10.213.0.0/16`) is cut into /30
//! networks, and the agent of the Nth `[[agent]]` table (counting from 0,
//! isolated or not) gets the Nth: the host end is .1, the agent's end .2.
//! Reordering or removing agent tables moves the agents after them; appending
//! does not. The host end is named `wd` and the /30's network address in hex
//! (`wd0ad50004` for 10.213.0.4/30): stable, unique per address, shorter than
//! IFNAMSIZ, and computable at start to remove what a crashed run left. In the
//! agent's namespace the link is `eth0`; IPv6 is off on both ends.
//!
//! warden sets up no NAT, forwarding or firewall: the agent reaches the host
//! end's address, and whatever the operator routes and allows beyond it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};

use serde_json::json;

pub use crate::config::net::{Subnet, DEFAULT_SUBNET, LINK_PREFIX};
use crate::config::{Config, NetworkMode};
use crate::netlink::{NetlinkError, Rtnl};
use crate::sys::exec::NetNs;

/// Prefix of every host-side interface warden creates.
pub const HOST_IF_PREFIX: &str = "wd";
/// The link's name inside the agent's namespace.
pub const AGENT_IF: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot make a network namespace: {0}")]
    Namespace(io::Error),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("no address: agent {0} is not inside isolated_subnet")]
    NoAddress(String),
}

impl Subnet {
    /// How many /30 links it holds.
    pub fn links(&self) -> u64 {
        1u64 << (LINK_PREFIX - self.prefix)
    }

    /// The `index`th /30 link, if the block holds it.
    pub fn link(&self, index: usize) -> Option<Link> {
        if index as u64 >= self.links() {
            return None;
        }
        let net = u32::from(self.network) + 4 * index as u32;
        Some(Link {
            host_if: host_ifname(net),
            host_addr: Ipv4Addr::from(net + 1),
            agent_addr: Ipv4Addr::from(net + 2),
        })
    }
}

/// `wd` + the /30's network address in hex: 10 characters, under IFNAMSIZ (16).
pub fn host_ifname(network: u32) -> String {
    format!("{HOST_IF_PREFIX}{network:08x}")
}

/// One isolated agent's addressing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The host end's interface name.
    pub host_if: String,
    /// The host end's address: the agent's gateway.
    pub host_addr: Ipv4Addr,
    /// The agent end's address (on `eth0`).
    pub agent_addr: Ipv4Addr,
}

impl Link {
    /// What the agent is told about its network.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("WARDEN_NET_ADDR".into(), self.agent_addr.to_string()),
            ("WARDEN_NET_PREFIX".into(), LINK_PREFIX.to_string()),
            ("WARDEN_NET_GATEWAY".into(), self.host_addr.to_string()),
        ]
    }
}

/// The link of agent `name` if it is isolated: the /30 of its table's index.
pub fn link_of(cfg: &Config, name: &str) -> Option<Link> {
    let (i, a) = cfg
        .agents
        .iter()
        .enumerate()
        .find(|(_, a)| a.name() == name)?;
    if a.network != NetworkMode::Isolated {
        return None;
    }
    cfg.isolated_subnet.link(i)
}

/// The agent's network for `status`: its mode and, when isolated, its link.
pub fn status(cfg: &Config, name: &str, net: Option<&AgentNet>) -> serde_json::Value {
    let mode = cfg.agent(name).map(|a| a.network).unwrap_or_default();
    let link = link_of(cfg, name);
    json!({
        "mode": mode,
        "interface": link.as_ref().map(|l| &l.host_if),
        "address": link.as_ref().map(|l| format!("{}/{LINK_PREFIX}", l.agent_addr)),
        "gateway": link.as_ref().map(|l| l.host_addr),
        "namespace": net.is_some(),
        "cut": net.is_some_and(|n| n.cut),
    })
}

/// A namespace warden made for one run of an agent. Dropping it deletes the
/// host end of its link (which deletes the pair) and closes the namespace,
/// which the kernel frees once no process is left in it.
#[derive(Debug)]
pub struct AgentNet {
    /// The namespace, held so that tool processes can join it while the agent runs.
    ns: OwnedFd,
    /// An rtnetlink socket inside it, to set the agent's end down at level 2.
    inside: Rtnl,
    /// The veth link (`isolated`); None for an empty namespace (`none`).
    link: Option<Link>,
    /// Level 2 set the link down.
    cut: bool,
}

impl AgentNet {
    /// The namespace agent `name` runs in: None for `host`, an empty one for
    /// `none`, one with its veth link configured for `isolated`.
    pub fn for_agent(cfg: &Config, name: &str) -> Result<Option<AgentNet>, NetError> {
        let mode = cfg.agent(name).map(|a| a.network).unwrap_or_default();
        match mode {
            NetworkMode::Host => Ok(None),
            NetworkMode::None => {
                let (ns, inside) = new_namespace()?;
                Ok(Some(AgentNet {
                    ns,
                    inside,
                    link: None,
                    cut: false,
                }))
            }
            NetworkMode::Isolated => {
                let link = link_of(cfg, name).ok_or_else(|| NetError::NoAddress(name.into()))?;
                isolated(name, link).map(Some)
            }
        }
    }

    /// A descriptor of the namespace for a child to join.
    pub fn join(&self) -> io::Result<NetNs> {
        Ok(NetNs::Join(self.ns.try_clone()?))
    }

    /// The agent's environment variables about its network.
    pub fn env(&self) -> Vec<(String, String)> {
        self.link.as_ref().map(Link::env).unwrap_or_default()
    }

    /// Kill level 2: both ends of the link down. Sockets stay open in the
    /// agent, packets stop; the agent cannot bring its end back up (it has no
    /// CAP_NET_ADMIN over the namespace, which belongs to the host's user
    /// namespace). Ok(None) when there is no link to cut.
    pub fn cut(&mut self) -> Result<Option<String>, String> {
        let Some(l) = &self.link else {
            return Ok(None);
        };
        let host = Rtnl::open().and_then(|mut h| h.set_up(&l.host_if, false));
        let inside = self.inside.set_up(AGENT_IF, false);
        self.cut |= host.is_ok() || inside.is_ok();
        match (host, inside) {
            (Ok(()), Ok(())) => Ok(Some(format!(
                "{} (host end, {}) and the agent's {AGENT_IF} ({}) set down",
                l.host_if, l.host_addr, l.agent_addr
            ))),
            (Err(h), Ok(())) => Err(format!(
                "the agent's {AGENT_IF} is down, but not the host end: {h}"
            )),
            (Ok(()), Err(i)) => Err(format!(
                "the host end {} is down, but not the agent's {AGENT_IF}: {i}",
                l.host_if
            )),
            (Err(h), Err(i)) => Err(format!("{h}; {i}")),
        }
    }
}

impl Drop for AgentNet {
    fn drop(&mut self) {
        if let Some(l) = &self.link {
            if let Err(e) = Rtnl::open().and_then(|mut h| h.del_link(&l.host_if)) {
                tracing::warn!("cannot remove the agent link {}: {e}", l.host_if);
            }
        }
    }
}

/// A new namespace and an rtnetlink socket in it, made in a thread of its
/// own so that the daemon's threads stay in the host's namespace.
fn new_namespace() -> Result<(OwnedFd, Rtnl), NetError> {
    std::thread::Builder::new()
        .name("warden-netns".into())
        .spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Namespace(e.into()))?;
            let ns =
                std::fs::File::open("/proc/thread-self/ns/net").map_err(NetError::Namespace)?;
            // Links created here later (the veth peer) start with IPv6 off.
            // /proc/sys/net is the calling thread's namespace.
            ipv6_off("default")?;
            let inside = Rtnl::open()?;
            Ok((OwnedFd::from(ns), inside))
        })
        .map_err(NetError::Namespace)?
        .join()
        .map_err(|_| NetError::Namespace(io::Error::other("namespace thread panicked")))?
}

/// `disable_ipv6` on interface `name` of the calling thread's namespace; a
/// kernel without IPv6 has nothing to disable.
fn ipv6_off(name: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(NetError::Namespace(io::Error::new(
            e.kind(),
            format!("cannot write {path}: {e}"),
        ))),
        _ => Ok(()),
    }
}

fn isolated(agent: &str, link: Link) -> Result<AgentNet, NetError> {
    let (ns, inside) = new_namespace()?;
    let mut host = Rtnl::open()?;
    // A link of this name is ours (warden's prefix, an address of our
    // subnet): an earlier run of this agent left it.
    host.del_link(&link.host_if)?;
    host.add_veth(&link.host_if, AGENT_IF, ns.as_fd())?;
    // From here on, dropping `net` on an error removes the pair.
    let mut net = AgentNet {
        ns,
        inside,
        link: Some(link.clone()),
        cut: false,
    };
    host.set_alias(&link.host_if, &format!("warden agent {agent}"))?;
    ipv6_off(&link.host_if)?;
    let hi = host.index(&link.host_if)?;
    host.add_addr(hi, link.host_addr, LINK_PREFIX)?;
    host.set_up(&link.host_if, true)?;
    net.inside.set_up("lo", true)?;
    let ai = net.inside.index(AGENT_IF)?;
    net.inside.add_addr(ai, link.agent_addr, LINK_PREFIX)?;
    net.inside.set_up(AGENT_IF, true)?;
    net.inside.add_default_route(ai, link.host_addr)?;
    Ok(net)
}

/// Deletes the host ends that an earlier run left for the configured isolated
/// agents (after a crash the kernel frees them only with the last process in
/// the namespace). Returns the names it deleted.
pub fn remove_leftovers(cfg: &Config) -> Result<Vec<String>, NetError> {
    let links: Vec<Link> = cfg
        .agents
        .iter()
        .filter_map(|a| link_of(cfg, a.name()))
        .collect();
    if links.is_empty() {
        return Ok(vec![]);
    }
    let mut host = Rtnl::open()?;
    let mut removed = vec![];
    for l in links {
        if host.del_link(&l.host_if)? {
            removed.push(l.host_if);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn subnets_parse_strictly() {
        let s: Subnet = "10.213.0.0/16".parse().unwrap();
        assert_eq!(s, Subnet::default());
        assert_eq!(s.to_string(), "10.213.0.0/16");
        assert_eq!(s.links(), 16384);
        assert_eq!("192.0.2.4/30".parse::<Subnet>().unwrap().links(), 1);
        assert_eq!("0.0.0.0/0".parse::<Subnet>().unwrap().links(), 1 << 30);
        for bad in [
            "10.213.0.0",
            "10.213.0.0/",
            "10.213.0/16",
            "10.213.0.0/+16",
            "10.213.0.0/016",
            "10.213.0.0/33",
            "fd00::/64",
            " 10.213.0.0/16",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        let e = "10.213.0.0/31".parse::<Subnet>().unwrap_err();
        assert!(e.contains("cannot hold a /30"), "{e}");
        let e = "10.213.0.1/16".parse::<Subnet>().unwrap_err();
        assert!(
            e.contains("host bits") && e.contains("10.213.0.0/16"),
            "{e}"
        );
    }

    #[test]
    fn links_are_consecutive_slash_30s() {
        let s: Subnet = "10.213.0.0/16".parse().unwrap();
        let l0 = s.link(0).unwrap();
        assert_eq!(l0.host_addr, Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(l0.agent_addr, Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(l0.host_if, "wd0ad50000");
        let l5 = s.link(5).unwrap();
        assert_eq!(l5.host_addr, Ipv4Addr::new(10, 213, 0, 21));
        assert_eq!(l5.agent_addr, Ipv4Addr::new(10, 213, 0, 22));
        assert_eq!(l5.host_if, "wd0ad50014");
        let last = s.link(16383).unwrap();
        assert_eq!(last.agent_addr, Ipv4Addr::new(10, 213, 255, 254));
        assert!(s.link(16384).is_none());
        let one: Subnet = "192.0.2.4/30".parse().unwrap();
        assert_eq!(one.link(0).unwrap().host_addr, Ipv4Addr::new(192, 0, 2, 5));
        assert!(one.link(1).is_none());
    }

    #[test]
    fn interface_names_fit_ifnamsiz_and_keep_the_prefix() {
        for net in [0u32, 0x0ad5_0004, u32::MAX - 3] {
            let n = host_ifname(net);
            assert!(n.len() < 16, "{n}");
            assert!(n.starts_with(HOST_IF_PREFIX));
            assert!(n.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        assert_ne!(host_ifname(0), host_ifname(4));
    }

    #[test]
    fn each_isolated_agent_gets_the_link_of_its_table_index() {
        let cfg = Config::parse(
            "isolated_subnet = \"10.9.0.0/24\"\n\
             [[agent]]\nname = \"a\"\ncommand = [\"/bin/true\"]\nnetwork = \"isolated\"\n\
             [[agent]]\nname = \"b\"\ncommand = [\"/bin/true\"]\n\
             [[agent]]\nname = \"c\"\ncommand = [\"/bin/true\"]\nnetwork = \"isolated\"\n\
             [[agent]]\nname = \"d\"\ncommand = [\"/bin/true\"]\nnetwork = \"none\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let a = link_of(&cfg, "a").unwrap();
        assert_eq!(a.agent_addr, Ipv4Addr::new(10, 9, 0, 2));
        assert!(link_of(&cfg, "b").is_none());
        let c = link_of(&cfg, "c").unwrap();
        assert_eq!(c.host_addr, Ipv4Addr::new(10, 9, 0, 9));
        assert_eq!(c.host_if, "wd0a090008");
        assert!(link_of(&cfg, "d").is_none());
        assert!(link_of(&cfg, "nope").is_none());
        let env = c.env();
        assert!(env.contains(&("WARDEN_NET_ADDR".into(), "10.9.0.10".into())));
        assert!(env.contains(&("WARDEN_NET_GATEWAY".into(), "10.9.0.9".into())));
        let st = status(&cfg, "c", None);
        assert_eq!(st["mode"], "isolated");
        assert_eq!(st["address"], "10.9.0.10/30");
        assert_eq!(st["interface"], "wd0a090008");
        assert_eq!(status(&cfg, "b", None)["mode"], "host");
    }
}
