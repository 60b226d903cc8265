//! Egress: a sandbox with `network.mode: Egress` gets a veth link from its
//! own network namespace into the agent pod's, where its traffic is NATed
//! to the pod's address (so the cluster's NetworkPolicy for agent pods
//! applies). Its allow and deny lists become the routes of its namespace,
//! which it cannot change (no `CAP_NET_ADMIN`); the agent pod's nftables
//! ruleset drops what no sandbox may reach (the operator's ranges,
//! link-local, the pod itself) whatever those routes say. See [`plan`].
//!
//! Nothing here outlives a sandbox: its link goes with its namespace, and
//! a restarted agent finds the links that still exist by name.

pub mod plan;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use fast_sandbox_api::network::{Ipv4Cidr, SandboxNetwork};
use futures::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use rustix::fs::{Mode, OFlags};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::rootfs::{self, SandboxPath, SandboxRoot};
use plan::{LinkAddrs, Route};

/// How the agent pod gives sandboxes egress.
#[derive(Clone, Debug)]
pub struct EgressConfig {
    /// The `nft` program (looked up on `PATH` unless absolute).
    pub nft: PathBuf,
    /// The operator's ranges no sandbox reaches (the cluster's own).
    pub denied: Vec<Ipv4Cidr>,
    /// The pod's `resolv.conf`, whose nameservers sandboxes use.
    pub resolv_conf: PathBuf,
    /// The pod's network sysctls (`/proc/sys/net`): forwarding, and each
    /// sandbox link's reverse path filter and IPv6 switch.
    pub sysctl_net: PathBuf,
}

/// Egress of one agent pod, or why there is none.
pub enum Egress {
    /// Sandboxes asking for egress get it.
    Ready(Links),
    /// Sandboxes asking for egress fail with this reason.
    Unavailable(String),
}

impl Egress {
    /// Sets the agent pod up for egress: forwarding, the nftables ruleset,
    /// and the links sandboxes still hold from before a restart. A failure
    /// leaves egress unavailable with its reason; the agent serves on.
    pub async fn start(cfg: Option<EgressConfig>, proc_root: PathBuf) -> Self {
        let Some(cfg) = cfg else {
            return Egress::Unavailable(
                "this agent was started without --egress (the policy's allowEgress was off for its namespace when its pod was made; new agents of the pool get it)"
                    .into(),
            );
        };
        match Links::start(cfg, proc_root).await {
            Ok(l) => {
                tracing::info!(links = l.count(), "egress ready");
                Egress::Ready(l)
            }
            Err(why) => {
                tracing::error!(error = %why, "egress is unavailable: sandboxes asking for it fail as EgressUnavailable");
                Egress::Unavailable(why)
            }
        }
    }

    /// Gives sandbox `uid` (host PID `pid`, cgroup leaf `leaf`) its network,
    /// when it asks for one; nothing to do otherwise (the path of most
    /// sandboxes).
    pub async fn attach(
        &self,
        uid: &str,
        pid: u32,
        leaf: &str,
        network: Option<&SandboxNetwork>,
    ) -> Result<()> {
        let Some(n) = network.filter(|n| n.has_egress()) else {
            return Ok(());
        };
        let (allow, deny) = n.rules().map_err(Error::Spec)?;
        match self {
            Egress::Ready(l) => l.attach(uid, pid, leaf, &allow, &deny).await,
            Egress::Unavailable(why) => Err(Error::EgressUnavailable(why.clone())),
        }
    }

    /// Fails at once when a sandbox asking for egress cannot get it, before
    /// any container is made.
    pub fn check(&self, network: Option<&SandboxNetwork>) -> Result<()> {
        match self {
            Egress::Unavailable(why) if network.is_some_and(|n| n.has_egress()) => {
                Err(Error::EgressUnavailable(why.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Frees sandbox `uid`'s link, if it has one.
    pub async fn release(&self, uid: &str) {
        if let Egress::Ready(l) = self {
            l.release(uid).await;
        }
    }
}

/// The sandbox links of an agent pod.
pub struct Links {
    handle: Handle,
    proc_root: PathBuf,
    sysctl_net: PathBuf,
    denied: Vec<Ipv4Cidr>,
    nameservers: Vec<Ipv4Addr>,
    /// Agent-side link name to link index.
    used: Mutex<HashMap<String, u32>>,
}

fn net_err(what: &str) -> impl Fn(rtnetlink::Error) -> Error + '_ {
    move |e| Error::EgressUnavailable(format!("{what}: {e}"))
}

impl Links {
    async fn start(cfg: EgressConfig, proc_root: PathBuf) -> std::result::Result<Self, String> {
        let forward = cfg.sysctl_net.join("ipv4/ip_forward");
        std::fs::write(&forward, "1")
            .map_err(|e| format!("turning forwarding on ({}): {e}", forward.display()))?;
        let nameservers =
            plan::nameservers(&std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default());
        apply_ruleset(&cfg.nft, &plan::ruleset(&cfg.denied, &nameservers)).await?;
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("opening netlink: {e}"))?;
        tokio::spawn(conn);
        let links = Self {
            handle,
            proc_root,
            sysctl_net: cfg.sysctl_net,
            denied: cfg.denied,
            nameservers,
            used: Mutex::new(HashMap::new()),
        };
        links
            .adopt()
            .await
            .map_err(|e| format!("listing the links of earlier sandboxes: {e}"))?;
        Ok(links)
    }

    fn used(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self) -> usize {
        self.used().len()
    }

    /// Records the links sandboxes still hold (an agent restart).
    async fn adopt(&self) -> std::result::Result<(), rtnetlink::Error> {
        let mut links = self.handle.link().get().execute();
        let mut names = HashMap::new();
        while let Some(msg) = links.try_next().await? {
            for a in &msg.attributes {
                if let LinkAttribute::IfName(n) = a
                    && n.starts_with(plan::LINK_PREFIX)
                {
                    names.insert(msg.header.index, n.clone());
                }
            }
        }
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await? {
            let Some(name) = names.get(&msg.header.index) else {
                continue;
            };
            for a in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a
                    && let Some(i) = LinkAddrs::index_of(*ip)
                {
                    self.used().insert(name.clone(), i);
                }
            }
        }
        // Links of an attach cut by the agent's death before the agent's
        // end had its address: they would block that sandbox's next
        // attach, and its retried create starts it over.
        let used: HashSet<String> = self.used().keys().cloned().collect();
        for (index, name) in names {
            if used.contains(&name) {
                continue;
            }
            tracing::info!(link = %name, "removing the link of an attach that never finished");
            // Deleting one end of a pair deletes the other, which may be
            // next in the list.
            if let Err(e) = self.handle.link().del(index).execute().await {
                tracing::debug!(link = %name, error = %e, "already gone");
            }
        }
        Ok(())
    }

    async fn attach(
        &self,
        uid: &str,
        pid: u32,
        leaf: &str,
        allow: &[Ipv4Cidr],
        deny: &[Ipv4Cidr],
    ) -> Result<()> {
        let name = plan::link_name(uid);
        // A link of this sandbox left by an attempt that failed later, or
        // by its container before a reset.
        self.release(uid).await;
        let index = {
            let mut used = self.used();
            let i = plan::free_index(used.values().copied()).ok_or_else(|| {
                Error::EgressUnavailable(format!(
                    "all {} sandbox links of this agent are taken",
                    plan::MAX_LINKS
                ))
            })?;
            used.insert(name.clone(), i);
            i
        };
        let made = self
            .make(pid, leaf, &name, LinkAddrs::of(index), allow, deny)
            .await;
        if made.is_err() {
            self.release(uid).await;
        }
        made
    }

    async fn make(
        &self,
        pid: u32,
        leaf: &str,
        name: &str,
        addrs: LinkAddrs,
        allow: &[Ipv4Cidr],
        deny: &[Ipv4Cidr],
    ) -> Result<()> {
        let proc_dir = rootfs::process_dir(&self.proc_root, pid, leaf)?;
        let netns = rustix::fs::openat(
            &proc_dir,
            "ns/net",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("opening the sandbox's network namespace", e.into()))?;
        let netns = File::from(netns);
        // One request makes both ends: the sandbox's is born in its
        // namespace, named eth0 (a move would wait for the network stack
        // to quiesce).
        let peer = LinkUnspec::new_with_name(plan::SANDBOX_IFNAME)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(net_err("making the sandbox's link"))?;
        // The two ends, each through its namespace's netlink socket, and
        // the sandbox's resolv.conf are set up at once.
        let resolv = async {
            let Some(conf) = plan::resolv_conf(&self.nameservers) else {
                return Ok(());
            };
            let (proc_root, leaf) = (self.proc_root.clone(), leaf.to_string());
            tokio::task::spawn_blocking(move || write_resolv_conf(&proc_root, pid, &leaf, &conf))
                .await
                .map_err(|e| Error::io("writing resolv.conf", std::io::Error::other(e)))?
        };
        let (agent_end, sandbox_end, resolv) = tokio::join!(
            self.agent_end(name, addrs),
            self.sandbox_end(netns, addrs, allow, deny),
            resolv
        );
        agent_end.and(sandbox_end).and(resolv)
    }

    /// Addresses the agent's end of link `name` and brings it up.
    async fn agent_end(&self, name: &str, addrs: LinkAddrs) -> Result<()> {
        let index = index_of(&self.handle, name).await?;
        self.harden(name)?;
        self.handle
            .address()
            .add(index, IpAddr::V4(addrs.gateway), plan::LINK_PREFIX_LEN)
            .execute()
            .await
            .map_err(net_err("addressing the agent's end"))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(net_err("bringing the agent's end up"))
    }

    /// Addresses the sandbox's end, in namespace `netns`, brings it up and
    /// routes the sandbox's allowed and denied destinations.
    async fn sandbox_end(
        &self,
        netns: File,
        addrs: LinkAddrs,
        allow: &[Ipv4Cidr],
        deny: &[Ipv4Cidr],
    ) -> Result<()> {
        let inside = connect_in(netns).await?;
        let inner = index_of(&inside, plan::SANDBOX_IFNAME).await?;
        inside
            .address()
            .add(inner, IpAddr::V4(addrs.sandbox), plan::LINK_PREFIX_LEN)
            .execute()
            .await
            .map_err(net_err("addressing the sandbox's end"))?;
        inside
            .link()
            .set(LinkUnspec::new_with_index(inner).up().build())
            .execute()
            .await
            .map_err(net_err("bringing the sandbox's end up"))?;
        for r in plan::routes(allow, deny, &self.denied, &self.nameservers) {
            let msg = match r {
                Route::Via(n) => RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(n.addr(), n.prefix())
                    .gateway(addrs.gateway)
                    .output_interface(inner)
                    .build(),
                Route::Unreachable(n) => RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(n.addr(), n.prefix())
                    .kind(RouteType::Unreachable)
                    .build(),
            };
            inside
                .route()
                .add(msg)
                .execute()
                .await
                .map_err(net_err("routing the sandbox"))?;
        }
        Ok(())
    }

    /// The agent's end of link `name` takes only packets from the address
    /// its sandbox was given (strict reverse path filter: a sandbox binding
    /// another's address, which needs no privilege, sends nothing), and no
    /// IPv6 (the pod's IPv6 addresses, and the agent's listeners on them,
    /// stay out of reach).
    fn harden(&self, name: &str) -> Result<()> {
        let set = |path: PathBuf| {
            std::fs::write(&path, "1")
                .map_err(|e| Error::EgressUnavailable(format!("setting {}: {e}", path.display())))
        };
        set(self
            .sysctl_net
            .join("ipv4/conf")
            .join(name)
            .join("rp_filter"))?;
        let ipv6 = self
            .sysctl_net
            .join("ipv6/conf")
            .join(name)
            .join("disable_ipv6");
        // A kernel without IPv6 has nothing to switch off.
        if ipv6.exists() {
            set(ipv6)?;
        }
        Ok(())
    }

    /// Frees the link of `uid`: one this agent made or adopted, so most
    /// sandboxes (no egress) cost no netlink call here.
    async fn release(&self, uid: &str) {
        let name = plan::link_name(uid);
        if self.used().remove(&name).is_none() {
            return;
        }
        // Deleting one end deletes both; the link may be gone with its
        // sandbox's namespace already.
        if let Ok(i) = index_of(&self.handle, &name).await
            && let Err(e) = self.handle.link().del(i).execute().await
        {
            tracing::debug!(link = %name, error = %e, "deleting a sandbox link");
        }
    }
}

/// The interface index of `name` in the namespace of `handle`.
async fn index_of(handle: &Handle, name: &str) -> Result<u32> {
    let msg = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(net_err("finding a sandbox link"))?;
    msg.map(|m| m.header.index).ok_or_else(|| {
        Error::EgressUnavailable(format!("link {name} vanished while it was set up"))
    })
}

/// A netlink connection inside the namespace `netns`: opened by a thread
/// that enters it and exits, so no thread the agent keeps changes
/// namespace (a socket stays in the namespace it was made in).
async fn connect_in(netns: File) -> Result<Handle> {
    let rt = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let made = setns(&netns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering the sandbox's network namespace: {e}"))
            .and_then(|()| {
                let _in_runtime = rt.enter();
                rtnetlink::new_connection().map_err(|e| format!("opening netlink: {e}"))
            })
            .map(|(conn, handle, _)| {
                rt.spawn(conn);
                handle
            });
        let _ = tx.send(made);
    });
    rx.await
        .map_err(|_| Error::EgressUnavailable("the netlink thread died".into()))?
        .map_err(Error::EgressUnavailable)
}

fn write_resolv_conf(proc_root: &Path, pid: u32, leaf: &str, conf: &str) -> Result<()> {
    let root = SandboxRoot::open(proc_root, pid, leaf)?.as_root();
    root.mkdir_all(&SandboxPath::parse("/etc")?, 0o755)?;
    let mut file = root.create(&SandboxPath::parse("/etc/resolv.conf")?, 0o644)?;
    file.write(conf.as_bytes())?;
    file.commit().map(|_| ())
}

async fn apply_ruleset(nft: &Path, ruleset: &str) -> std::result::Result<(), String> {
    let mut child = tokio::process::Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("running {}: {e}", nft.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .await
            .map_err(|e| format!("writing to {}: {e}", nft.display()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("running {}: {e}", nft.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} refused the ruleset: {}",
            nft.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
