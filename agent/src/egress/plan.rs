//! What egress sets up, decided without I/O: each sandbox's point-to-point
//! link and addresses, the routes of its network namespace (which enforce
//! its own allow and deny lists), the agent pod's nftables ruleset (NAT and
//! the denials no sandbox can lift), and the sandbox's `resolv.conf`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use fast_sandbox_api::network::{ALWAYS_DENIED, Ipv4Cidr};

/// Addresses of sandbox links: a /30 each, inside link-local so no pod,
/// service or node address can clash, and below 169.254.169.0/24 (cloud
/// metadata), which stays unrouted.
pub const LINK_RANGE: Ipv4Cidr = Ipv4Cidr::new_unchecked(Ipv4Addr::new(169, 254, 64, 0), 18);
/// How many sandbox links one agent pod can hold.
pub const MAX_LINKS: u32 = 1 << (32 - 18 - 2);
/// Prefix of the agent-side name of every sandbox link; nftables matches
/// sandbox traffic by it.
pub const LINK_PREFIX: &str = "fsx";
/// Name of the sandbox's end of its link, inside its namespace.
pub const SANDBOX_IFNAME: &str = "eth0";
/// The nftables table of the agent pod's network namespace.
pub const TABLE: &str = "fast_sandbox";

/// Agent-side name of the link of sandbox `uid` (interface names hold 15
/// bytes): a stable hash, so a restarted agent finds the links it made.
pub fn link_name(uid: &str) -> String {
    format!("{LINK_PREFIX}{:012x}", fnv1a(uid) & 0xffff_ffff_ffff)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The two ends of link `index`: the agent pod's (the sandbox's gateway)
/// and the sandbox's, both in a /30.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkAddrs {
    /// The agent pod's end.
    pub gateway: Ipv4Addr,
    /// The sandbox's end.
    pub sandbox: Ipv4Addr,
}

/// Prefix length of each link's addresses.
pub const LINK_PREFIX_LEN: u8 = 30;

impl LinkAddrs {
    /// The addresses of link `index` (below [`MAX_LINKS`]).
    pub fn of(index: u32) -> Self {
        let base = u32::from(LINK_RANGE.addr()) + 4 * index;
        Self {
            gateway: Ipv4Addr::from(base + 1),
            sandbox: Ipv4Addr::from(base + 2),
        }
    }

    /// The link whose gateway is `gateway`, if it is one.
    pub fn index_of(gateway: Ipv4Addr) -> Option<u32> {
        let off = u32::from(gateway).checked_sub(u32::from(LINK_RANGE.addr()))?;
        (off % 4 == 1 && off / 4 < MAX_LINKS).then_some(off / 4)
    }
}

/// The lowest link index not in `used`.
pub fn free_index(used: impl IntoIterator<Item = u32>) -> Option<u32> {
    let mut used: Vec<u32> = used.into_iter().collect();
    used.sort_unstable();
    let mut next = 0;
    for u in used {
        if u > next {
            break;
        }
        next = next.max(u + 1);
    }
    (next < MAX_LINKS).then_some(next)
}

/// One route of a sandbox's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Reached through the link's gateway.
    Via(Ipv4Cidr),
    /// Refused at once ("no route to host").
    Unreachable(Ipv4Cidr),
}

/// The routes of a sandbox allowed `allow` and denied `deny`, on an agent
/// whose operator denies `denied` and whose nameservers are `nameservers`.
/// The kernel picks the most specific route, so the most specific entry
/// decides; on equal networks a denial wins. Nameservers get a route of
/// their own (DNS works however narrow `allow` is) unless `deny` names
/// exactly them; the agent pod lets only port 53 through to them.
pub fn routes(
    allow: &[Ipv4Cidr],
    deny: &[Ipv4Cidr],
    denied: &[Ipv4Cidr],
    nameservers: &[Ipv4Addr],
) -> Vec<Route> {
    let mut by_net: BTreeMap<Ipv4Cidr, Route> = BTreeMap::new();
    for &a in allow {
        by_net.insert(a, Route::Via(a));
    }
    for &ns in nameservers {
        let n = Ipv4Cidr::containing(ns, 32);
        by_net.insert(n, Route::Via(n));
    }
    for &d in ALWAYS_DENIED.iter().chain(denied) {
        by_net.entry(d).or_insert(Route::Unreachable(d));
    }
    for &d in deny {
        by_net.insert(d, Route::Unreachable(d));
    }
    by_net.into_values().collect()
}

/// `nets` without the ones another entry covers (nftables refuses
/// overlapping intervals in one set).
pub fn outermost(nets: &[Ipv4Cidr]) -> Vec<Ipv4Cidr> {
    let mut out: Vec<Ipv4Cidr> = Vec::new();
    let mut sorted = nets.to_vec();
    sorted.sort_by_key(|n| n.prefix());
    for n in sorted {
        if !out.iter().any(|o| o.covers(&n)) {
            out.push(n);
        }
    }
    out.sort();
    out
}

/// The agent pod's nftables ruleset, replacing any earlier one in one
/// transaction: sandbox links may not reach the agent pod itself (its API
/// among it) nor `denied` (with link-local, loopback and the links
/// themselves) except for DNS to `nameservers`; nothing from outside opens
/// a connection to a sandbox; sandbox traffic leaves NATed to the pod's
/// address.
pub fn ruleset(denied: &[Ipv4Cidr], nameservers: &[Ipv4Addr]) -> String {
    let all: Vec<Ipv4Cidr> = ALWAYS_DENIED
        .iter()
        .chain(denied)
        .copied()
        .chain([LINK_RANGE])
        .collect();
    let set = |items: Vec<String>| items.join(", ");
    let deny = set(outermost(&all).iter().map(|n| n.to_string()).collect());
    let dns = if nameservers.is_empty() {
        String::new()
    } else {
        let ns = set(nameservers.iter().map(|n| n.to_string()).collect());
        format!(
            "    iifname \"{LINK_PREFIX}*\" ip daddr {{ {ns} }} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
        )
    };
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority filter - 5; policy accept;\n\
         \x20   iifname \"{LINK_PREFIX}*\" ct state established,related accept\n\
         \x20   iifname \"{LINK_PREFIX}*\" counter drop\n\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter - 5; policy accept;\n\
         {dns}\
         \x20   iifname \"{LINK_PREFIX}*\" ip daddr {{ {deny} }} counter drop\n\
         \x20   oifname \"{LINK_PREFIX}*\" ct state established,related accept\n\
         \x20   oifname \"{LINK_PREFIX}*\" counter drop\n\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr {LINK_RANGE} oifname != \"{LINK_PREFIX}*\" masquerade\n\
         \x20 }}\n\
         }}\n"
    )
}

/// The IPv4 nameservers of a `resolv.conf`.
pub fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The `resolv.conf` a sandbox gets: the agent pod's nameservers only
/// (its search domains name the operator's namespace, nothing a sandbox
/// needs); `None` when there are none.
pub fn resolv_conf(nameservers: &[Ipv4Addr]) -> Option<String> {
    if nameservers.is_empty() {
        return None;
    }
    let mut out = String::from("# written by the sandbox's agent\n");
    for ns in nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn links_have_stable_names_that_fit_an_interface() {
        let a = link_name("0f7c2f0e-6d5b-4f0e-9a51-3c1f7f6c2d11");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(LINK_PREFIX));
        assert_eq!(a, link_name("0f7c2f0e-6d5b-4f0e-9a51-3c1f7f6c2d11"));
        assert_ne!(a, link_name("0f7c2f0e-6d5b-4f0e-9a51-3c1f7f6c2d12"));
    }

    #[test]
    fn link_addresses_are_distinct_thirties_inside_the_range() {
        let first = LinkAddrs::of(0);
        assert_eq!(first.gateway, Ipv4Addr::new(169, 254, 64, 1));
        assert_eq!(first.sandbox, Ipv4Addr::new(169, 254, 64, 2));
        let last = LinkAddrs::of(MAX_LINKS - 1);
        assert!(LINK_RANGE.contains(last.sandbox));
        assert!(!net("169.254.169.0/24").contains(last.sandbox));
        assert_eq!(LinkAddrs::index_of(LinkAddrs::of(77).gateway), Some(77));
        assert_eq!(LinkAddrs::index_of(LinkAddrs::of(77).sandbox), None);
        assert_eq!(LinkAddrs::index_of(Ipv4Addr::new(10, 0, 0, 1)), None);
        assert_eq!(free_index([]), Some(0));
        assert_eq!(free_index([0, 1, 3]), Some(2));
        assert_eq!(free_index([1, 0, 1]), Some(2));
        assert_eq!(free_index(0..MAX_LINKS), None);
    }

    #[test]
    fn the_most_specific_entry_decides_and_deny_wins_a_tie() {
        let r = routes(
            &[Ipv4Cidr::ANY, net("10.1.0.0/16"), net("203.0.113.0/24")],
            &[net("10.0.0.0/8"), net("203.0.113.0/24")],
            &[net("10.96.0.0/12")],
            &[Ipv4Addr::new(10, 96, 0, 10)],
        );
        assert!(r.contains(&Route::Via(Ipv4Cidr::ANY)));
        assert!(r.contains(&Route::Via(net("10.1.0.0/16"))));
        assert!(r.contains(&Route::Unreachable(net("10.0.0.0/8"))));
        assert!(r.contains(&Route::Unreachable(net("203.0.113.0/24"))));
        assert!(!r.contains(&Route::Via(net("203.0.113.0/24"))));
        assert!(r.contains(&Route::Unreachable(net("10.96.0.0/12"))));
        assert!(r.contains(&Route::Via(net("10.96.0.10/32"))), "DNS");
        assert!(r.contains(&Route::Unreachable(net("169.254.0.0/16"))));
        let nets: Vec<_> = r
            .iter()
            .map(|r| match r {
                Route::Via(n) | Route::Unreachable(n) => *n,
            })
            .collect();
        let mut unique = nets.clone();
        unique.dedup();
        assert_eq!(nets, unique, "one route per network");
    }

    #[test]
    fn allowing_an_always_denied_range_still_routes_nowhere() {
        let r = routes(&[net("169.254.0.0/16")], &[], &[], &[]);
        assert_eq!(
            r.iter()
                .filter(|r| matches!(r, Route::Via(n) if *n == net("169.254.0.0/16")))
                .count(),
            1,
            "the tenant's own route exists; the agent pod's ruleset drops it"
        );
        assert!(ruleset(&[], &[]).contains("169.254.0.0/16"));
    }

    #[test]
    fn the_ruleset_merges_overlaps_and_lets_dns_through() {
        let text = ruleset(
            &[
                net("10.0.0.0/8"),
                net("10.96.0.0/16"),
                net("192.168.0.0/16"),
            ],
            &[Ipv4Addr::new(10, 96, 0, 10)],
        );
        assert!(text.starts_with("table ip fast_sandbox\ndelete table ip fast_sandbox\n"));
        assert!(text.contains("ip daddr { 0.0.0.0/8, 10.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 192.168.0.0/16, 224.0.0.0/4, 240.0.0.0/4 } counter drop"));
        assert!(
            text.contains("ip daddr { 10.96.0.10 } meta l4proto { tcp, udp } th dport 53 accept")
        );
        assert!(text.find("dport 53").unwrap() < text.find("0.0.0.0/8").unwrap());
        assert!(text.contains("ip saddr 169.254.64.0/18 oifname != \"fsx*\" masquerade"));
        assert!(!ruleset(&[], &[]).contains("dport 53"));
    }

    #[test]
    fn resolv_conf_keeps_ipv4_nameservers_only() {
        let ns = nameservers(
            "search ops.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\n# nameserver 1.1.1.1\noptions ndots:5\n",
        );
        assert_eq!(ns, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(
            resolv_conf(&ns).unwrap(),
            "# written by the sandbox's agent\nnameserver 10.96.0.10\n"
        );
        assert_eq!(resolv_conf(&[]), None);
    }
}
