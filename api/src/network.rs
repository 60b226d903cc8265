//! A sandbox's network: loopback only (the default), or outbound IPv4
//! through its agent pod with allow and deny lists of destinations. The
//! types of `spec.network`, the CIDR parser every component shares, and the
//! check admission and the agent both make.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most entries of one of `allow` and `deny`.
pub const MAX_CIDRS: usize = 64;

/// Destinations no sandbox reaches, whatever its lists and the operator's
/// policy say: "this network", loopback, link-local (cloud metadata at
/// 169.254.169.254 among it), multicast and the reserved block.
pub const ALWAYS_DENIED: [Ipv4Cidr; 5] = [
    Ipv4Cidr::new_unchecked(Ipv4Addr::new(0, 0, 0, 0), 8),
    Ipv4Cidr::new_unchecked(Ipv4Addr::new(127, 0, 0, 0), 8),
    Ipv4Cidr::new_unchecked(Ipv4Addr::new(169, 254, 0, 0), 16),
    Ipv4Cidr::new_unchecked(Ipv4Addr::new(224, 0, 0, 0), 4),
    Ipv4Cidr::new_unchecked(Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// A sandbox's network.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxNetwork {
    /// `None` (the default): the sandbox has only its loopback. `Egress`:
    /// it also gets an IPv4 interface into its agent pod's network, NATed
    /// to the agent pod's address, so the cluster's NetworkPolicy for
    /// agent pods applies to it.
    #[serde(default)]
    pub mode: NetworkMode,
    /// IPv4 CIDRs an `Egress` sandbox may reach; every address when empty.
    /// The most specific entry of `allow` and `deny` decides; `deny` wins a
    /// tie. The operator's denied ranges (the cluster's own), link-local
    /// (cloud metadata) and loopback stay unreachable whatever is allowed;
    /// DNS to the agent pod's nameservers keeps working.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 18)))]
    pub allow: Vec<String>,
    /// IPv4 CIDRs an `Egress` sandbox may not reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 18)))]
    pub deny: Vec<String>,
}

/// Whether a sandbox has a network beyond its loopback.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// Outbound IPv4 through the agent pod, policed by `allow` and `deny`.
    Egress,
}

impl SandboxNetwork {
    /// Whether the sandbox gets an interface beyond loopback.
    pub fn has_egress(&self) -> bool {
        self.mode == NetworkMode::Egress
    }

    /// Every problem of the lists, each naming its field under `prefix`
    /// (e.g. `spec.network.`).
    pub fn problems(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if list.len() > MAX_CIDRS {
                out.push((
                    format!("{prefix}{name}"),
                    format!("at most {MAX_CIDRS} entries, not {}", list.len()),
                ));
            }
            for (i, c) in list.iter().enumerate() {
                if let Err(e) = c.parse::<Ipv4Cidr>() {
                    out.push((format!("{prefix}{name}[{i}]"), e.to_string()));
                }
            }
        }
        if self.mode == NetworkMode::None && !(self.allow.is_empty() && self.deny.is_empty()) {
            out.push((
                format!("{prefix}mode"),
                "allow and deny apply to mode Egress only; mode None has no network to police"
                    .to_string(),
            ));
        }
        out
    }

    /// The parsed lists `(allow, deny)`; `allow` is every address when
    /// empty. Fails with the first problem.
    pub fn rules(&self) -> Result<(Vec<Ipv4Cidr>, Vec<Ipv4Cidr>), String> {
        if let Some((field, why)) = self.problems("network.").into_iter().next() {
            return Err(format!("{field}: {why}"));
        }
        let parse = |l: &[String]| l.iter().filter_map(|c| c.parse().ok()).collect::<Vec<_>>();
        let mut allow = parse(&self.allow);
        if allow.is_empty() {
            allow.push(Ipv4Cidr::ANY);
        }
        Ok((allow, parse(&self.deny)))
    }
}

/// An IPv4 network in CIDR notation, host bits clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `a.b.c.d/n`.
    #[error("{0:?} is not an IPv4 CIDR such as 203.0.113.0/24")]
    Syntax(String),
    /// An IPv6 network: sandboxes have no IPv6 route.
    #[error("{0:?} is IPv6; sandboxes reach IPv4 destinations only")]
    Ipv6(String),
    /// Bits set past the prefix.
    #[error("{given:?} has host bits set; did you mean {meant}?")]
    HostBits {
        /// What was written.
        given: String,
        /// The network it is in.
        meant: Ipv4Cidr,
    },
}

impl Ipv4Cidr {
    /// Every IPv4 address.
    pub const ANY: Ipv4Cidr = Ipv4Cidr::new_unchecked(Ipv4Addr::UNSPECIFIED, 0);

    /// A network from an address whose host bits are clear and a prefix of
    /// at most 32 (constants only; [`FromStr`] checks input).
    pub const fn new_unchecked(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    /// The network containing `addr` with `prefix` bits (at most 32).
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    /// The network's first address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether every address of `other` is in this network.
    pub fn covers(&self, other: &Ipv4Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            return Err(CidrError::Ipv6(s.to_string()));
        }
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if prefix > 32 {
            return Err(syntax());
        }
        let net = Ipv4Cidr::containing(addr, prefix);
        if net.addr != addr {
            return Err(CidrError::HostBits {
                given: s.to_string(),
                meant: net,
            });
        }
        Ok(net)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_strictly_and_name_the_fix() {
        let n: Ipv4Cidr = "203.0.113.0/24".parse().unwrap();
        assert_eq!(n.to_string(), "203.0.113.0/24");
        assert!(n.contains(Ipv4Addr::new(203, 0, 113, 9)));
        assert!(!n.contains(Ipv4Addr::new(203, 0, 114, 0)));
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap(), Ipv4Cidr::ANY);
        assert!(Ipv4Cidr::ANY.contains(Ipv4Addr::new(8, 8, 8, 8)));
        assert_eq!(
            "203.0.113.5/24"
                .parse::<Ipv4Cidr>()
                .unwrap_err()
                .to_string(),
            "\"203.0.113.5/24\" has host bits set; did you mean 203.0.113.0/24?"
        );
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/+8",
            "10.0.0.0/008",
        ] {
            assert!(
                matches!(bad.parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "fd00:ec2::254/128".parse::<Ipv4Cidr>(),
            Err(CidrError::Ipv6(_))
        ));
        let wide: Ipv4Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(wide.covers(&"10.96.0.0/16".parse().unwrap()));
        assert!(!"10.96.0.0/16".parse::<Ipv4Cidr>().unwrap().covers(&wide));
    }

    #[test]
    fn problems_name_the_entry() {
        let n = SandboxNetwork {
            mode: NetworkMode::Egress,
            allow: vec!["1.2.3.0/24".into(), "nope".into()],
            deny: vec!["::/0".into()],
        };
        let p = n.problems("spec.network.");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, "spec.network.allow[1]");
        assert_eq!(p[1].0, "spec.network.deny[0]");
        assert!(n.rules().unwrap_err().starts_with("network.allow[1]: "));
        let quiet = SandboxNetwork {
            allow: vec!["1.2.3.0/24".into()],
            ..Default::default()
        };
        assert_eq!(quiet.problems("spec.network.")[0].0, "spec.network.mode");
        let open = SandboxNetwork {
            mode: NetworkMode::Egress,
            ..Default::default()
        };
        assert_eq!(open.rules().unwrap(), (vec![Ipv4Cidr::ANY], vec![]));
    }

    #[test]
    fn the_always_denied_ranges_are_networks() {
        for n in ALWAYS_DENIED {
            assert_eq!(n.to_string().parse::<Ipv4Cidr>().unwrap(), n);
        }
        assert!(ALWAYS_DENIED[2].contains(Ipv4Addr::new(169, 254, 169, 254)));
    }
}
