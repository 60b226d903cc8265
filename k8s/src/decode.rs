//! One decoding policy for every watch: an object the apiserver stores but
//! our types cannot read is skipped, counted and reported once, and never
//! fails a list or a watch as a whole.
//!
//! kube-rs decodes a list page as one value, so a single odd object (an
//! `expireTime` with ten fractional digits, say) fails the whole initial
//! list, and a restarted component would never turn ready. These watches
//! read objects untyped and decode each on its own.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::de::DeserializeOwned;

/// Objects remembered as already reported; the set is cleared when full.
const MAX_REPORTED: usize = 4096;

/// Why one object could not be read, with the path of the offending field.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// Dotted path of the field that failed (`spec.expireTime`), or `.`
    /// for the object as a whole.
    pub path: String,
    /// The decoder's complaint.
    pub message: String,
}

/// The error at `path`; a missing field is named by its own path
/// (`spec.poolRef`, not `spec`).
fn decode_error(path: String, message: String) -> DecodeError {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split_once('`'))
        .map(|(field, _)| field.to_string());
    let path = match missing {
        Some(field) if path == "." => field,
        Some(field) => format!("{path}.{field}"),
        None => path,
    };
    DecodeError { path, message }
}

/// Decodes `value` as `K`, naming the field that does not fit.
pub fn from_value<K: DeserializeOwned>(value: serde_json::Value) -> Result<K, DecodeError> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| decode_error(e.path().to_string(), e.inner().to_string()))
}

/// Decodes JSON bytes as `K`, naming the field that does not fit.
pub fn from_slice<K: DeserializeOwned>(bytes: &[u8]) -> Result<K, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de)
        .map_err(|e| decode_error(e.path().to_string(), e.inner().to_string()))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// Counts and reports the objects that could not be decoded. One per
/// process, shared by its watches.
#[derive(Debug)]
pub struct Undecodable {
    skipped: Family<KindLabels, Counter>,
    reported: Mutex<HashSet<(String, String)>>,
}

impl Default for Undecodable {
    fn default() -> Self {
        Self {
            skipped: Family::default(),
            reported: Mutex::new(HashSet::new()),
        }
    }
}

impl Undecodable {
    /// Registers `undecodable_objects_total{kind}` in `registry`.
    pub fn register(registry: &fast_sandbox_server::Registry) -> std::sync::Arc<Self> {
        let me = std::sync::Arc::new(Self::default());
        registry.with(|r| {
            r.register(
                "undecodable_objects",
                "Objects skipped by a watch because they do not fit our types",
                me.skipped.clone(),
            )
        });
        me
    }

    /// Objects of `kind` skipped so far.
    pub fn count(&self, kind: &str) -> u64 {
        self.skipped
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .get()
    }

    fn skip(&self, kind: &str, obj: &DynamicObject, err: &DecodeError) {
        self.skipped
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
        let key = (
            obj.uid().unwrap_or_else(|| obj.name_any()),
            obj.resource_version().unwrap_or_default(),
        );
        let first = {
            let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= MAX_REPORTED {
                seen.clear();
            }
            seen.insert(key)
        };
        if first {
            tracing::warn!(
                kind,
                namespace = obj.namespace().unwrap_or_default(),
                name = %obj.name_any(),
                uid = obj.uid().unwrap_or_default(),
                field = %err.path,
                error = %err.message,
                "skipping an object our types cannot read; fix or delete it"
            );
        }
    }
}

/// A resource watched through [`watch`]: its objects can be rebuilt from
/// metadata alone, so an object that turns unreadable can still be removed
/// from a cache by name.
pub trait Watched:
    Resource<DynamicType = ()> + DeserializeOwned + Default + Clone + Debug + Send + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()> + DeserializeOwned + Default + Clone + Debug + Send + 'static
{
}

/// Turns one untyped event into a typed one, or `None` to drop it.
///
/// An object that no longer decodes is reported as deleted (a tombstone
/// carrying only its metadata), so caches forget the last readable
/// version instead of acting on it; one that never decoded is dropped.
pub fn convert<K: Watched>(event: Event<DynamicObject>, sink: &Undecodable) -> Option<Event<K>> {
    let kind = K::kind(&());
    let decode = |obj: &DynamicObject| -> Result<K, DecodeError> {
        match serde_json::to_value(obj) {
            Ok(v) => from_value::<K>(v),
            Err(e) => Err(DecodeError {
                path: ".".into(),
                message: e.to_string(),
            }),
        }
    };
    let tombstone = |obj: DynamicObject| {
        let mut k = K::default();
        *k.meta_mut() = obj.metadata;
        k
    };
    match event {
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
        Event::InitApply(o) => match decode(&o) {
            Ok(k) => Some(Event::InitApply(k)),
            Err(e) => {
                sink.skip(&kind, &o, &e);
                None
            }
        },
        Event::Apply(o) => match decode(&o) {
            Ok(k) => Some(Event::Apply(k)),
            Err(e) => {
                sink.skip(&kind, &o, &e);
                Some(Event::Delete(tombstone(o)))
            }
        },
        Event::Delete(o) => Some(Event::Delete(match decode(&o) {
            Ok(k) => k,
            Err(_) => tombstone(o),
        })),
    }
}

/// Watches `K` (in `namespace`, or everywhere) like kube's `watcher`, with
/// every object decoded on its own: an object that does not fit `K` is
/// skipped and reported through `sink`, never failing the watch.
pub fn watch<K: Watched>(
    client: Client,
    namespace: Option<&str>,
    config: watcher::Config,
    sink: std::sync::Arc<Undecodable>,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static {
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    watcher::watcher(api, config).filter_map(move |ev| {
        let out = match ev {
            Ok(ev) => convert::<K>(ev, &sink).map(Ok),
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_sandbox_api::Sandbox;
    use serde_json::json;

    fn dynamic(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    fn sandbox_json(expire: &str) -> serde_json::Value {
        json!({
            "apiVersion": "sandbox.fast.io/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "odd", "namespace": "team", "uid": "u-1", "resourceVersion": "7"},
            "spec": {"image": "busybox", "poolRef": "p", "expireTime": expire}
        })
    }

    #[test]
    fn a_readable_object_passes_and_an_odd_one_is_skipped_and_counted() {
        let sink = Undecodable::default();
        let good = dynamic(sandbox_json("2026-12-01T00:00:00Z"));
        let bad = dynamic(sandbox_json("2026-12-01T00:00:00.1234567890Z"));
        assert!(matches!(
            convert::<Sandbox>(Event::InitApply(good), &sink),
            Some(Event::InitApply(_))
        ));
        assert!(convert::<Sandbox>(Event::InitApply(bad.clone()), &sink).is_none());
        assert_eq!(sink.count("Sandbox"), 1);
        // An update that makes it unreadable removes it from caches.
        match convert::<Sandbox>(Event::Apply(bad.clone()), &sink) {
            Some(Event::Delete(s)) => {
                assert_eq!(s.metadata.name.as_deref(), Some("odd"));
                assert_eq!(s.metadata.namespace.as_deref(), Some("team"));
            }
            other => panic!("expected a tombstone, got {other:?}"),
        }
        assert!(matches!(
            convert::<Sandbox>(Event::Delete(bad), &sink),
            Some(Event::Delete(_))
        ));
        assert_eq!(sink.count("Sandbox"), 2);
    }

    #[test]
    fn the_error_names_the_field() {
        let err = from_value::<Sandbox>(sandbox_json("not a time")).unwrap_err();
        assert_eq!(err.path, "spec.expireTime");
        let err = from_slice::<Sandbox>(br#"{"spec": {"image": 3}}"#).unwrap_err();
        assert_eq!(err.path, "spec.image");
        let err = from_slice::<Sandbox>(br#"{"spec": {"image": "busybox"}}"#).unwrap_err();
        assert_eq!(err.path, "spec.poolRef");
        assert!(err.message.contains("missing field"), "{err}");
    }
}
