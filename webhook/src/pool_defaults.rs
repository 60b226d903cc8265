//! Each pool's `sandboxDefaults` and `defaultNetwork` as the pool watch
//! last saw them, so admission fills in a new sandbox's limits and network
//! without an apiserver call.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use fast_sandbox_api::{SandboxNetwork, SandboxPool, SandboxResources};
use fast_sandbox_placement::pool_key;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

/// What a pool fills into a sandbox that sets none of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Defaults {
    /// The pool's `sandboxDefaults`.
    pub resources: Option<SandboxResources>,
    /// The pool's `defaultNetwork`.
    pub network: Option<SandboxNetwork>,
}

impl Defaults {
    /// The defaults of `pool`; `None` when it sets none.
    pub fn of(pool: &SandboxPool) -> Option<Self> {
        let d = Self {
            resources: pool.spec.sandbox_defaults.clone(),
            network: pool.spec.default_network.clone(),
        };
        (d != Self::default()).then_some(d)
    }
}

/// Pool key → its defaults; pools without defaults are absent.
#[derive(Debug, Default)]
pub struct PoolDefaults {
    current: RwLock<HashMap<String, Defaults>>,
    /// The map being rebuilt by a re-list, swapped in when it is done.
    relist: Mutex<Option<HashMap<String, Defaults>>>,
}

fn key_of(pool: &SandboxPool) -> String {
    pool_key(&pool.namespace().unwrap_or_default(), &pool.name_any())
}

impl PoolDefaults {
    /// Applies one event of the pool watch.
    pub fn observe(&self, event: &Event<SandboxPool>) {
        let mut relist = self.relist.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Init => *relist = Some(HashMap::new()),
            Event::InitApply(pool) => {
                if let (Some(map), Some(d)) = (relist.as_mut(), Defaults::of(pool)) {
                    map.insert(key_of(pool), d);
                }
            }
            Event::InitDone => {
                if let Some(map) = relist.take() {
                    *self.write() = map;
                }
            }
            Event::Apply(pool) => {
                let key = key_of(pool);
                match Defaults::of(pool) {
                    Some(d) => self.write().insert(key, d),
                    None => self.write().remove(&key),
                };
            }
            Event::Delete(pool) => {
                self.write().remove(&key_of(pool));
            }
        }
    }

    /// The defaults of the pool with `key`, if it has any.
    pub fn get(&self, key: &str) -> Option<Defaults> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Defaults>> {
        self.current.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pool(name: &str, memory: Option<&str>) -> SandboxPool {
        let mut p = SandboxPool::new(name, Default::default());
        p.metadata.namespace = Some("team".into());
        p.spec.sandbox_defaults = memory.map(|m| SandboxResources {
            memory: Some(Quantity(m.into())),
            ..Default::default()
        });
        p
    }

    #[test]
    fn follows_applies_deletes_and_relists() {
        let d = PoolDefaults::default();
        d.observe(&Event::Apply(pool("a", Some("64Mi"))));
        d.observe(&Event::Apply(pool("b", Some("1Gi"))));
        let key = |n| pool_key("team", n);
        assert_eq!(
            d.get(&key("a"))
                .unwrap()
                .resources
                .unwrap()
                .memory
                .unwrap()
                .0,
            "64Mi"
        );
        d.observe(&Event::Apply(pool("a", None)));
        assert_eq!(d.get(&key("a")), None);
        // A re-list replaces everything once done, and not before.
        d.observe(&Event::Init);
        d.observe(&Event::InitApply(pool("c", Some("2Gi"))));
        assert!(d.get(&key("b")).is_some());
        d.observe(&Event::InitDone);
        assert_eq!(d.get(&key("b")), None);
        assert!(d.get(&key("c")).is_some());
        d.observe(&Event::Delete(pool("c", Some("2Gi"))));
        assert_eq!(d.get(&key("c")), None);
        let mut egress = pool("e", None);
        egress.spec.default_network = Some(SandboxNetwork {
            mode: fast_sandbox_api::NetworkMode::Egress,
            ..Default::default()
        });
        d.observe(&Event::Apply(egress));
        assert!(d.get(&key("e")).unwrap().network.unwrap().has_egress());
    }
}
