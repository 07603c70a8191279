//! The `isolated_subnet` block as the configuration writes it: plain data,
//! cut into links by the network namespaces.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// The default `isolated_subnet`.
pub const DEFAULT_SUBNET: &str = "10.213.0.0/16";
/// Each isolated agent's network is a /30: network, host end, agent end, broadcast.
pub const LINK_PREFIX: u8 = 30;

/// An IPv4 block written as "10.213.0.0/16", parsed strictly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub(crate) network: Ipv4Addr,
    pub(crate) prefix: u8,
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let bad = || format!("{s:?} is not an IPv4 block like \"{DEFAULT_SUBNET}\"");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let network: Ipv4Addr = a.parse().map_err(|_| bad())?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > LINK_PREFIX {
            return Err(format!(
                "{s:?}: a /{prefix} cannot hold a /{LINK_PREFIX} link (use /{LINK_PREFIX} or shorter)"
            ));
        }
        let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
        if u32::from(network) & !mask != 0 {
            let base = Ipv4Addr::from(u32::from(network) & mask);
            return Err(format!(
                "{s:?} has host bits set (the block is {base}/{prefix})"
            ));
        }
        Ok(Subnet { network, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Default for Subnet {
    fn default() -> Subnet {
        DEFAULT_SUBNET.parse().expect("default subnet")
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
