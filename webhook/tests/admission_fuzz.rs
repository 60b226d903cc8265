//! Admission against objects generated from the CRDs' own schemas: for
//! every Sandbox and SandboxPool the generator makes (extreme but valid
//! values included: date-times with many fractional digits, integer
//! bounds, unicode, maximum sizes), the webhook either admits it in a form
//! every component can read back, or refuses it naming a field. Never an
//! admitted object our types cannot decode, never a panic.
//!
//! The corpus of cases that once mattered (`tests/corpus/`) is replayed
//! every run; then random objects for `FAST_SANDBOX_FUZZ_SECONDS` (default
//! 3) from a seed printed on failure (`FAST_SANDBOX_FUZZ_SEED` replays it).
//! A failure prints the object: add it to the corpus with the fix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fast_sandbox_api::{Sandbox, SandboxPool};
use fast_sandbox_placement::{AgentState, Index};
use fast_sandbox_webhook::review::{Caller, DEFAULT_CONTROLLER_USERNAME, PoolLookup, Reviewer};
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

const SANDBOX_CRD: &str = include_str!("../../deploy/crds/sandbox.fast.io_sandboxes.yaml");
const POOL_CRD: &str = include_str!("../../deploy/crds/sandbox.fast.io_sandboxpools.yaml");

/// xorshift64*: small, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "a",
    "busybox",
    "docker.io/fast-sandbox/busybox:dev",
    "/bin/sh",
    "/tmp",
    "tmp",
    "default-pool",
    "Ünïcödé",
    "日本語",
    "emoji-😀",
    "right-to-left-\u{202e}txt",
    "combining-e\u{301}",
    "nul-\u{0}-inside",
    "new\nline",
    "tab\there",
    "../../etc/passwd",
    "a=b",
    "-dash",
    ".dot",
    "UPPER",
    "with space",
    "\u{feff}bom",
];

fn string(rng: &mut Rng, schema: &Value) -> String {
    let max = schema["maxLength"].as_u64().unwrap_or(64);
    let min = schema["minLength"].as_u64().unwrap_or(0);
    match rng.below(4) {
        0 => rng.pick(ODD_STRINGS).to_string(),
        1 => {
            // At a length bound, or just past it.
            let len = *rng.pick(&[min, max, max.saturating_add(1), min.saturating_sub(1)]);
            let c = *rng.pick(&['a', 'é', '0', '-', '😀']);
            std::iter::repeat_n(c, len.min(70_000) as usize).collect()
        }
        _ => {
            let len = rng.below(max.min(40) + 1);
            (0..len)
                .map(|_| *rng.pick(&['a', 'z', '0', '9', '-', '.', '_', '/', 'A', 'é']))
                .collect()
        }
    }
}

fn date_time(rng: &mut Rng) -> String {
    let year = *rng.pick(&[1, 1970, 2026, 2099, 9999]);
    let frac_digits = rng.below(13);
    let frac: String = (0..frac_digits)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect();
    let frac = if frac.is_empty() {
        frac
    } else {
        format!(".{frac}")
    };
    let sep = *rng.pick(&["T", "t", " "]);
    let zone = *rng.pick(&["Z", "z", "+00:00", "-07:30", "+14:00"]);
    let second = *rng.pick(&[0, 59, 60]);
    format!("{year:04}-12-31{sep}23:59:{second:02}{frac}{zone}")
}

fn quantity(rng: &mut Rng) -> Value {
    match rng.below(3) {
        0 => json!(*rng.pick(&[0i64, 1, 2, 1024, i64::from(i32::MAX), i64::MAX])),
        _ => json!(*rng.pick(&[
            "500m",
            "2",
            "64Mi",
            "1Gi",
            "1e3",
            ".5",
            "+1Ki",
            "-1",
            "0",
            "1Ti",
            "6Mi",
            "1Ei",
            "9999999999999999999",
            "1.5",
            "100n",
            "lots",
            "",
        ])),
    }
}

fn integer(rng: &mut Rng, schema: &Value) -> Value {
    let min = schema["minimum"].as_f64().map(|m| m as i64);
    let max = schema["maximum"].as_f64().map(|m| m as i64);
    let mut choices = vec![
        0i64,
        1,
        -1,
        i64::from(i32::MAX),
        i64::from(i32::MIN),
        i64::MAX,
        i64::MIN,
        1 << 53,
    ];
    if let Some(m) = min {
        choices.extend([m, m.saturating_sub(1), m.saturating_add(1)]);
    }
    if let Some(m) = max {
        choices.extend([m, m.saturating_add(1), m.saturating_sub(1)]);
    }
    json!(*rng.pick(&choices))
}

/// A value for `schema`, valid most of the time, odd often.
fn generate(rng: &mut Rng, schema: &Value, depth: u32) -> Value {
    if schema["nullable"].as_bool() == Some(true) && rng.chance(5) {
        return Value::Null;
    }
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        return quantity(rng);
    }
    if let Some(options) = schema["enum"].as_array() {
        return if rng.chance(90) {
            rng.pick(options).clone()
        } else {
            json!("NotAnEnumValue")
        };
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut out = Map::new();
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = schema["properties"].as_object() {
                for (name, sub) in props {
                    let keep = required.contains(&name.as_str()) && rng.chance(97)
                        || rng.chance(if depth > 3 { 10 } else { 40 });
                    if keep {
                        out.insert(name.clone(), generate(rng, sub, depth + 1));
                    }
                }
            }
            if schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true) {
                // Whatever a user puts in an open object (an agent template).
                let keys = [
                    "spec",
                    "metadata",
                    "hostPID",
                    "containers",
                    "image",
                    "labels",
                ];
                for _ in 0..rng.below(4) {
                    let k = rng.pick(&keys).to_string();
                    let v = if depth < 6 && rng.chance(50) {
                        generate(
                            rng,
                            &json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                            depth + 1,
                        )
                    } else {
                        json!(*rng.pick(&[
                            json!(true),
                            json!("x"),
                            json!(3),
                            json!([{"name": "agent"}])
                        ]))
                    };
                    out.insert(k, v);
                }
            }
            Value::Object(out)
        }
        Some("array") => {
            let max = schema["maxItems"].as_u64().unwrap_or(8);
            let len = if rng.chance(3) {
                max.min(300)
            } else {
                rng.below(max.min(4) + 1)
            };
            Value::Array(
                (0..len)
                    .map(|_| generate(rng, &schema["items"], depth + 1))
                    .collect(),
            )
        }
        Some("string") if schema["format"].as_str() == Some("date-time") => json!(date_time(rng)),
        Some("string") => json!(string(rng, schema)),
        Some("integer") => integer(rng, schema),
        Some("number") => json!(*rng.pick(&[0.0, 1.5, -1.0, 1e300])),
        Some("boolean") => json!(rng.chance(50)),
        _ => Value::Null,
    }
}

fn spec_schema(crd: &str) -> Value {
    let crd: Value = serde_yaml::from_str(crd).expect("the CRD parses");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

struct Pools;
impl PoolLookup for Pools {
    fn get<'a>(
        &'a self,
        _: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SandboxPool>, String>> {
        let pool = SandboxPool::new(name, Default::default());
        Box::pin(async move { Ok(Some(pool)) })
    }
    fn in_namespace<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<SandboxPool>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn reviewer() -> Reviewer {
    let index = Arc::new(Index::new());
    index.upsert_pool("fuzz/default-pool");
    index.upsert_agent(AgentState {
        pool_key: "fuzz/default-pool".into(),
        pod_name: "agent-0".into(),
        node_name: "node".into(),
        ready: true,
        draining: false,
        slots_total: 1_000_000,
        images: vec!["docker.io/fast-sandbox/busybox:dev".into()],
    });
    Reviewer::new(index, DEFAULT_CONTROLLER_USERNAME).with_pool_lookup(Arc::new(Pools))
}

fn review(kind: &str, spec: &Value) -> Vec<u8> {
    let resource = if kind == "Sandbox" {
        "sandboxes"
    } else {
        "sandboxpools"
    };
    let object = json!({"apiVersion": "sandbox.fast.io/v1alpha1", "kind": kind,
                        "metadata": {"name": "fuzzed", "namespace": "fuzz"}, "spec": spec});
    serde_json::to_vec(&json!({
        "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {"uid": "fuzz", "kind": {"group": "sandbox.fast.io", "version": "v1alpha1", "kind": kind},
                    "resource": {"group": "sandbox.fast.io", "version": "v1alpha1", "resource": resource},
                    "name": "fuzzed", "namespace": "fuzz", "operation": "CREATE",
                    "userInfo": {"username": "fuzzer"}, "object": object}
    }))
    .unwrap()
}

/// The property, for one object: `Err` says what broke.
async fn check(r: &Reviewer, kind: &str, spec: &Value) -> Result<(), String> {
    let body = review(kind, spec);
    let verdict = r
        .review(&body, Caller::APISERVER)
        .await
        .map_err(|e| format!("the review was not answered: {e}"))?;
    let resp = &verdict.response;
    if !resp.allowed {
        let msg = resp.message().unwrap_or_default();
        return if msg.starts_with("spec") || msg.starts_with("metadata") {
            Ok(())
        } else {
            Err(format!("refused without naming a field: {msg}"))
        };
    }
    let mut object: Value =
        serde_json::from_slice::<Value>(&body).unwrap()["request"]["object"].clone();
    if let Some(patch) = resp.patch_ops() {
        json_patch::patch(&mut object, &patch)
            .map_err(|e| format!("the patch does not apply: {e}"))?;
    }
    let decoded = match kind {
        "Sandbox" => serde_json::from_value::<Sandbox>(object.clone())
            .map(|s| serde_json::to_value(s).unwrap())
            .map_err(|e| e.to_string()),
        _ => serde_json::from_value::<SandboxPool>(object.clone())
            .map(|p| serde_json::to_value(p).unwrap())
            .map_err(|e| e.to_string()),
    };
    match decoded {
        Ok(round) => {
            // What a component writes back must read again.
            let again = match kind {
                "Sandbox" => serde_json::from_value::<Sandbox>(round).map(|_| ()),
                _ => serde_json::from_value::<SandboxPool>(round).map(|_| ()),
            };
            again.map_err(|e| format!("admitted, but does not survive a round trip: {e}"))
        }
        Err(e) => Err(format!("admitted, but our types cannot read it: {e}")),
    }
}

#[tokio::test]
async fn the_corpus_is_admitted_readably_or_refused_by_field() {
    let r = reviewer();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/corpus exists") {
        let path = entry.unwrap().path();
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let kind = case["kind"].as_str().expect("each case names its kind");
        if let Err(e) = check(&r, kind, &case["spec"]).await {
            panic!("{}: {e}\n{}", path.display(), case["spec"]);
        }
        if let Some(want) = case["refusedAt"].as_str() {
            let v = r
                .review(&review(kind, &case["spec"]), Caller::APISERVER)
                .await
                .unwrap();
            let msg = v.response.message().unwrap_or_default();
            assert!(
                !v.response.allowed && msg.contains(want),
                "{}: want a refusal at {want}, got {msg:?}",
                path.display()
            );
        }
        n += 1;
    }
    assert!(n >= 10, "the corpus has {n} cases");
}

#[tokio::test]
async fn generated_objects_are_admitted_readably_or_refused_by_field() {
    let r = reviewer();
    let seed: u64 = std::env::var("FAST_SANDBOX_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let seconds: u64 = std::env::var("FAST_SANDBOX_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let schemas = [
        ("Sandbox", spec_schema(SANDBOX_CRD)),
        ("SandboxPool", spec_schema(POOL_CRD)),
    ];
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut runs, mut admitted) = (0u64, 0u64);
    while Instant::now() < deadline {
        let (kind, schema) = rng.pick(&schemas);
        let mut spec = generate(&mut rng, schema, 0);
        if *kind == "Sandbox" && rng.chance(60) {
            // Mostly a pool that exists, so binding is exercised too.
            spec["poolRef"] = json!("default-pool");
        }
        if let Err(e) = check(&r, kind, &spec).await {
            panic!("seed {seed}, run {runs}: {kind} {e}\n{spec}");
        }
        let v = r
            .review(&review(kind, &spec), Caller::APISERVER)
            .await
            .unwrap();
        admitted += u64::from(v.response.allowed);
        runs += 1;
    }
    eprintln!(
        "{runs} generated objects (seed {seed}), {admitted} admitted, the rest refused by field"
    );
    assert!(runs > 100, "only {runs} objects in {seconds}s");
    assert!(
        admitted > 0,
        "the generator never made an admissible object"
    );
}
