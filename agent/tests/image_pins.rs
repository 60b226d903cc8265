//! Image pins against a real containerd: an image a sandbox uses, or an
//! agent's stock needs, carries containerd's CRI pin (what the kubelet's
//! image garbage collection skips) and the agent's mark; the pin stays
//! while any agent holds the image and goes with the last one, and a pin
//! Fast Sandbox did not set is never removed. The janitor releases the
//! marks of agents that are gone. Alone in its test binary: the janitor
//! sees the whole node.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use fast_sandbox_agent::pin::{self, OURS_LABEL, PINNED_LABEL, PINNED_VALUE};
use fast_sandbox_api::agent::JanitorRequest;
use fast_sandbox_api::image::normalize;
use support::{TestAgent, env, noshell_image, request, wait_for};

async fn labels(a: &TestAgent, image: &str) -> HashMap<String, String> {
    a.cd.image_labels(&normalize(image))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("image {image} is not in containerd"))
}

fn pinned(l: &HashMap<String, String>) -> bool {
    l.get(PINNED_LABEL).map(String::as_str) == Some(PINNED_VALUE)
}

#[tokio::test]
async fn images_in_use_stay_pinned_until_the_last_agent_lets_go() {
    let env = env();
    let a = TestAgent::start(&env, "pins-a", 4).await;
    let image = env.image.clone();
    let b = TestAgent::start_with(&env, "pins-b", 4, |c| {
        c.stock_size = 0;
        c.stock_images = vec![image];
    })
    .await;
    let (mark_a, mark_b) = (
        pin::mark(&a.agent.config().pod_uid),
        pin::mark(&b.agent.config().pod_uid),
    );

    // A sandbox's image is pinned by its agent within moments of the
    // create, by the agent's own sync.
    a.client
        .create(&request(&env, "pin-1", &["sleep", "100000"]))
        .await
        .unwrap()
        .1
        .unwrap();
    wait_for(
        "the sandbox's image pinned",
        Duration::from_secs(10),
        || async {
            let l = labels(&a, &env.image).await;
            pinned(&l) && l.contains_key(&mark_a)
        },
    )
    .await;
    // The stock's image is needed by b without any sandbox.
    b.agent.sync_pins().await.unwrap();
    let l = labels(&a, &env.image).await;
    assert!(l.contains_key(&mark_b), "{l:?}");

    // a lets go: still pinned for b.
    a.client.delete("pin-1", 0).await.unwrap().1.unwrap();
    a.agent.sync_pins().await.unwrap();
    let l = labels(&a, &env.image).await;
    assert!(!l.contains_key(&mark_a), "{l:?}");
    assert!(pinned(&l), "b still holds it: {l:?}");

    // b is gone: the janitor releases its mark, and the pin goes with it.
    let live = JanitorRequest {
        live_agent_uids: vec![],
        namespace: None,
    };
    a.client.janitor(&live).await.unwrap().unwrap();
    let l = labels(&a, &env.image).await;
    assert!(!l.contains_key(&mark_b), "{l:?}");
    assert!(!pinned(&l) && !l.contains_key(OURS_LABEL), "{l:?}");

    // An image the operator pinned stays pinned after Fast Sandbox used it.
    let noshell = noshell_image();
    let operator = pin::LabelChange {
        set: HashMap::from([(PINNED_LABEL.to_string(), PINNED_VALUE.to_string())]),
        remove: vec![],
    };
    assert!(
        a.cd.update_image_labels(&normalize(&noshell), &operator)
            .await
            .unwrap()
    );
    let mut req = request(&env, "pin-2", &["/tool", "sleep"]);
    req.image = noshell.clone();
    a.client.create(&req).await.unwrap().1.unwrap();
    a.agent.sync_pins().await.unwrap();
    assert!(labels(&a, &noshell).await.contains_key(&mark_a));
    a.client.delete("pin-2", 0).await.unwrap().1.unwrap();
    a.agent.sync_pins().await.unwrap();
    let l = labels(&a, &noshell).await;
    assert!(pinned(&l) && !l.contains_key(&mark_a), "{l:?}");
    let undo = pin::LabelChange {
        set: HashMap::new(),
        remove: vec![PINNED_LABEL.to_string()],
    };
    a.cd.update_image_labels(&normalize(&noshell), &undo)
        .await
        .unwrap();
    a.assert_nothing_left().await;
}
