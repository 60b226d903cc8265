//! The one way every binary learns it should stop: SIGTERM (what the
//! kubelet sends) or Ctrl-C.

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

/// How long a server behind a Service keeps accepting after SIGTERM: the
/// endpoint removal takes a moment to reach every node's kube-proxy, and
/// until then new connections still arrive. Closing at once refuses them
/// (an admission call failing during a rolling restart). With the drain
/// that follows it fits the pods' 15 s termination grace period.
pub const LEAVE_SERVICE_DELAY: std::time::Duration = std::time::Duration::from_secs(4);

/// Resolves like [`signal`], then reports not ready and keeps serving for
/// [`LEAVE_SERVICE_DELAY`] while the Service stops routing here.
pub async fn signal_then_leave_service(health: &crate::health::Health) {
    signal().await;
    health.set_ready(false);
    tracing::info!(delay = ?LEAVE_SERVICE_DELAY, "not ready; serving until the Service stops routing here");
    tokio::time::sleep(LEAVE_SERVICE_DELAY).await;
}
