//! An image with no shell, no tar and no coreutils (one static program,
//! `/tool`): exec and every file operation still work, because the agent
//! needs nothing inside the image.

mod support;

use bytes::Bytes;
use fast_sandbox_api::exec::reason;
use fast_sandbox_api::files::FileType;
use support::{TestAgent, env, exec, exec_request, noshell_image, request, stdout, tar_of};

fn body(data: impl Into<Bytes>) -> fast_sandbox_agent::client::RequestBody {
    fast_sandbox_server::body::full(data.into())
}

#[tokio::test]
async fn exec_and_files_work_without_a_shell_in_the_image() {
    let env = env();
    let image = noshell_image();
    let a = TestAgent::start(&env, "noshell", 2).await;
    let c = &a.client;
    let mut req = request(&env, "ns", &[]);
    req.image = image;
    c.create(&req).await.unwrap().1.unwrap();

    let o = exec(c, "ns", &["/tool", "echo", "hello", "world"]).await;
    assert_eq!(stdout(&o), "hello world\n");
    // Found through the image's PATH (/).
    assert_eq!(
        stdout(&exec(c, "ns", &["tool", "echo", "via", "PATH"]).await),
        "via PATH\n"
    );
    assert_eq!(
        exec(c, "ns", &["tool", "exit", "42"])
            .await
            .status
            .exit_code,
        Some(42)
    );
    let sh = exec(c, "ns", &["sh", "-c", "true"]).await;
    assert_eq!(sh.status.exit_code, Some(127));
    assert_eq!(sh.status.reason, reason::COMMAND_NOT_FOUND);
    assert_eq!(
        String::from_utf8_lossy(&sh.stderr),
        "sh: command not found\n"
    );
    let mut cat = exec_request(&["tool", "cat"]);
    cat.stdin = true;
    let o = c
        .exec_collect("ns", &cat, Some(b"piped"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.stdout, b"piped");

    // Files: write, read back in and out, list, stat, tar each way.
    let info = c
        .write_file(
            "ns",
            "/data/note",
            Some(0o600),
            body("written by the agent"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.mode, 0o600);
    assert_eq!(
        stdout(&exec(c, "ns", &["tool", "read", "/data/note"]).await),
        "written by the agent"
    );
    let root = c.list_dir("ns", "/").await.unwrap().unwrap();
    let names: Vec<_> = root.items.iter().map(|i| i.name.as_str()).collect();
    assert!(
        names.contains(&"tool") && names.contains(&"data"),
        "{names:?}"
    );
    assert!(!names.contains(&"bin"), "{names:?}");
    let tool = c.stat("ns", "/tool").await.unwrap().unwrap();
    assert_eq!(tool.file_type, FileType::File);
    assert_eq!(tool.mode & 0o111, 0o111);
    let archive = tar_of(c, "ns", "/data").await;
    c.mkdir("ns", "/copy", None).await.unwrap().unwrap();
    c.untar("ns", "/copy", body(archive))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stdout(&exec(c, "ns", &["tool", "read", "/copy/data/note"]).await),
        "written by the agent"
    );
    c.remove("ns", "/copy", true).await.unwrap().unwrap();
    assert!(c.stat("ns", "/copy").await.unwrap().is_err());

    c.delete("ns", 0).await.unwrap().1.unwrap();
    a.assert_nothing_left().await;
}
