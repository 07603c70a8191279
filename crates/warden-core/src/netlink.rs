//! A small rtnetlink client: exactly the requests an agent's veth link needs
//! (create a pair with one end in another namespace, look up a link, add an
//! address, set a link up or down, add a default route, delete a link).
//!
//! Hand-written rather than taken from netlink-packet-route: six fixed
//! message layouts from rtnetlink(7), each acknowledged by the kernel, cost
//! less to review than a generic attribute model and its dependencies in the
//! trusted core. A socket talks to the network namespace it was created in,
//! whichever thread later uses it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol};

// linux/netlink.h
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_HDRLEN: usize = 16;
// linux/rtnetlink.h
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
// linux/if_link.h, linux/if_addr.h, linux/veth.h
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFF_UP: u32 = 0x1;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;

/// A kernel answer never takes this long; a hung socket must not hang the daemon.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(io::Error),
    #[error("{what}: {source}")]
    Request { what: String, source: io::Error },
    #[error("{what}: malformed netlink reply")]
    Malformed { what: String },
}

impl NetlinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One request under construction: header, fixed part, attributes.
#[derive(Debug)]
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16, fixed: &[u8]) -> Msg {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(fixed);
        Msg { buf }
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        self.pad();
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    /// A NUL-terminated string attribute.
    fn attr_str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }

    /// Opens a nested attribute; returns where its header is, for [`Msg::end`].
    fn begin(&mut self, ty: u16) -> usize {
        self.pad();
        let at = self.buf.len();
        self.attr(ty, &[]);
        at
    }

    fn end(&mut self, at: usize) {
        self.pad();
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        self.pad();
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// `struct ifinfomsg`.
fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = AF_UNSPEC;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// What one datagram from the kernel said about request `seq`.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// The acknowledgement (errno 0) or the error.
    Ack(i32),
    /// An RTM_NEWLINK answer: its ifindex.
    Link(i32),
    /// Nothing about this request.
    Other,
}

/// Walks the messages of one datagram, in order.
fn parse(datagram: &[u8], seq: u32) -> Option<Vec<Reply>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= datagram.len() {
        let len = u32_at(datagram, at)? as usize;
        let ty = u16_at(datagram, at + 4)?;
        let mseq = u32_at(datagram, at + 8)?;
        if len < NLMSG_HDRLEN || at + len > datagram.len() {
            return None;
        }
        let body = &datagram[at + NLMSG_HDRLEN..at + len];
        out.push(match ty {
            _ if mseq != seq => Reply::Other,
            NLMSG_ERROR => Reply::Ack(u32_at(body, 0)? as i32),
            NLMSG_DONE => Reply::Other,
            RTM_NEWLINK => Reply::Link(u32_at(body, 4)? as i32),
            _ => Reply::Other,
        });
        at += (len + 3) & !3;
    }
    Some(out)
}

/// An rtnetlink socket in the network namespace it was opened in.
#[derive(Debug)]
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl, NetlinkError> {
        let err = |e: nix::Error| NetlinkError::Socket(e.into());
        let fd = socket::socket(
            AddressFamily::Netlink,
            socket::SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(err)?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(err)?;
        let tv = nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs() as i64, 0);
        socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv).map_err(err)?;
        Ok(Rtnl { fd, seq: 0 })
    }

    /// Sends `msg` and waits for its acknowledgement; returns the ifindex of
    /// an RTM_NEWLINK answer if one came before it.
    fn request(&mut self, what: &str, msg: Msg) -> Result<Option<i32>, NetlinkError> {
        let fail = |source: io::Error| NetlinkError::Request {
            what: what.to_string(),
            source,
        };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let buf = msg.finish(seq);
        let sent = socket::send(self.fd.as_raw_fd(), &buf, MsgFlags::empty())
            .map_err(|e| fail(e.into()))?;
        if sent != buf.len() {
            return Err(fail(io::Error::other("short send")));
        }
        let mut link = None;
        let mut rx = vec![0u8; 32 * 1024];
        loop {
            let n = match socket::recv(self.fd.as_raw_fd(), &mut rx, MsgFlags::empty()) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(fail(e.into())),
            };
            let replies = parse(&rx[..n], seq).ok_or_else(|| NetlinkError::Malformed {
                what: what.to_string(),
            })?;
            for r in replies {
                match r {
                    Reply::Ack(0) => return Ok(link),
                    Reply::Ack(e) => return Err(fail(io::Error::from_raw_os_error(-e))),
                    Reply::Link(i) => link = Some(i),
                    Reply::Other => {}
                }
            }
        }
    }

    /// The ifindex of the link named `name`.
    pub fn index(&mut self, name: &str) -> Result<i32, NetlinkError> {
        let what = format!("look up link {name}");
        let mut m = Msg::new(RTM_GETLINK, 0, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        self.request(&what, m)?
            .ok_or(NetlinkError::Malformed { what })
    }

    /// Creates the veth pair `host` (here) and `peer` (in the namespace `peer_ns`).
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, host);
        let info = m.begin(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"veth");
        let data = m.begin(IFLA_INFO_DATA);
        // The peer is a struct ifinfomsg followed by its own attributes (veth(4)).
        let p = m.begin(VETH_INFO_PEER);
        m.buf.extend_from_slice(&ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, peer);
        m.attr(
            IFLA_NET_NS_FD,
            &(peer_ns.as_fd().as_raw_fd() as u32).to_ne_bytes(),
        );
        m.end(p);
        m.end(data);
        m.end(info);
        self.request(&format!("create veth pair {host} / {peer}"), m)
            .map(drop)
    }

    /// Sets the description (`ifalias`) of the link named `name`. The kernel
    /// ignores an alias given at creation, so this is a request of its own.
    pub fn set_alias(&mut self, name: &str, alias: &str) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWLINK, 0, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        m.attr(IFLA_IFALIAS, alias.as_bytes());
        self.request(&format!("describe link {name}"), m).map(drop)
    }

    /// Sets the link named `name` up or down.
    pub fn set_up(&mut self, name: &str, up: bool) -> Result<(), NetlinkError> {
        let mut m = Msg::new(
            RTM_NEWLINK,
            0,
            &ifinfomsg(0, if up { IFF_UP } else { 0 }, IFF_UP),
        );
        m.attr_str(IFLA_IFNAME, name);
        let state = if up { "up" } else { "down" };
        self.request(&format!("set link {name} {state}"), m)
            .map(drop)
    }

    /// Adds `addr/prefix` to the link `index`.
    pub fn add_addr(&mut self, index: i32, addr: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        let mut fixed = [0u8; 8];
        fixed[0] = AF_INET;
        fixed[1] = prefix;
        fixed[3] = RT_SCOPE_UNIVERSE;
        fixed[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &fixed);
        m.attr(IFA_LOCAL, &addr.octets());
        m.attr(IFA_ADDRESS, &addr.octets());
        self.request(&format!("add address {addr}/{prefix}"), m)
            .map(drop)
    }

    /// Adds a default route through `gateway` on the link `index`.
    pub fn add_default_route(&mut self, index: i32, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let fixed = [
            AF_INET,
            0, // dst_len: the default route
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_STATIC,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &fixed);
        m.attr(RTA_GATEWAY, &gateway.octets());
        m.attr(RTA_OIF, &(index as u32).to_ne_bytes());
        self.request(&format!("add default route via {gateway}"), m)
            .map(drop)
    }

    /// Deletes the link named `name` (both ends, for a veth). Ok(false) if
    /// there was no such link.
    pub fn del_link(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let mut m = Msg::new(RTM_DELLINK, 0, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        match self.request(&format!("delete link {name}"), m) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_hold_their_length() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, "wd1");
        let n = m.begin(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"veth");
        m.end(n);
        let b = m.finish(7);
        assert_eq!(u32_at(&b, 0).unwrap() as usize, b.len());
        assert_eq!(b.len() % 4, 0);
        assert_eq!(u16_at(&b, 4), Some(RTM_NEWLINK));
        assert_eq!(
            u16_at(&b, 6),
            Some(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
        );
        assert_eq!(u32_at(&b, 8), Some(7));
        // "wd1\0": rta_len 8, no padding needed.
        let a = NLMSG_HDRLEN + 16;
        assert_eq!(u16_at(&b, a), Some(8));
        assert_eq!(u16_at(&b, a + 2), Some(IFLA_IFNAME));
        assert_eq!(&b[a + 4..a + 8], b"wd1\0");
        // The nest covers its header and the 4+4 byte "veth" attribute.
        assert_eq!(u16_at(&b, a + 8), Some(12));
        assert_eq!(u16_at(&b, a + 10), Some(IFLA_LINKINFO));
        assert_eq!(u16_at(&b, a + 12), Some(8));
        assert_eq!(&b[a + 16..a + 20], b"veth");
        assert_eq!(b.len(), a + 20);
    }

    #[test]
    fn odd_lengths_are_padded() {
        let mut m = Msg::new(RTM_GETLINK, 0, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, "eth0");
        let b = m.finish(1);
        // rta_len counts the 5 bytes of "eth0\0", the message is padded to 8.
        assert_eq!(u16_at(&b, NLMSG_HDRLEN + 16), Some(9));
        assert_eq!(b.len(), NLMSG_HDRLEN + 16 + 12);
    }

    fn reply(ty: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut v = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn replies_are_matched_by_sequence() {
        let mut d = reply(RTM_NEWLINK, 3, &ifinfomsg(42, 0, 0));
        d.extend(reply(NLMSG_ERROR, 2, &(-17i32).to_ne_bytes()));
        d.extend(reply(NLMSG_ERROR, 3, &0i32.to_ne_bytes()));
        assert_eq!(
            parse(&d, 3).unwrap(),
            vec![Reply::Link(42), Reply::Other, Reply::Ack(0)]
        );
        let e = reply(NLMSG_ERROR, 5, &(-libc::ENODEV).to_ne_bytes());
        assert_eq!(parse(&e, 5).unwrap(), vec![Reply::Ack(-libc::ENODEV)]);
        // A length past the end of the datagram is malformed.
        let mut bad = reply(NLMSG_ERROR, 5, &0i32.to_ne_bytes());
        bad[0] = 200;
        assert!(parse(&bad, 5).is_none());
    }
}
