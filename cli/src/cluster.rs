//! Which cluster and namespace a command talks to: the kubeconfig (the
//! `KUBECONFIG` variable or `~/.kube/config` unless a file is named), its
//! current context unless one is named, in-cluster configuration as the
//! last resort; the namespace is the context's unless one is given.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig could not be read or has no usable context.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] KubeconfigError),
    /// Neither a kubeconfig nor in-cluster configuration was found.
    #[error("no cluster configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client of the cluster and the namespace commands default to.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(kube::Client, String), ClusterError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await?,
        (None, None) => kube::Config::infer().await?,
    };
    let namespace = config.default_namespace.clone();
    Ok((client(config)?, namespace))
}

/// The client commands use: one that answers at once. The library's
/// default retries 429, 503 and 504 up to 15 times, backing off to minutes;
/// for a user those answers are news (a sandbox running as many execs as it
/// may, an agent that is down), so a refused `exec` would hang for minutes
/// instead of saying why.
pub fn client(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    kube::Client::try_from(config)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_refusal_is_reported_at_once_not_retried() {
        // A server that answers every request 429, as the access server
        // does for a sandbox running as many execs as it may.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let Ok(n @ 1..) = s.read(&mut buf).await else {
                            return;
                        };
                        seen.extend_from_slice(&buf[..n]);
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"apiVersion":"v1","kind":"Status","status":"Failure","code":429,"reason":"TooManyRequests","message":"sandbox sb: too many execs"}"#;
                    let answer = format!(
                        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        let client = client(kube::Config::new(format!("http://{addr}").parse().unwrap())).unwrap();
        let opts = crate::exec::ExecOptions {
            command: vec!["true".into()],
            ..Default::default()
        };
        let io = crate::exec::Streams {
            stdin: tokio::io::empty(),
            stdout: tokio::io::sink(),
            stderr: tokio::io::sink(),
            resize: None,
        };
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            crate::exec::exec(client, "team", "sb", &opts, io),
        )
        .await
        .expect("a refused exec was retried instead of reported")
        .unwrap_err();
        assert!(err.to_string().contains("too many execs"), "{err}");
        assert_eq!(requests.load(Ordering::SeqCst), 1, "sent once");
    }
}
