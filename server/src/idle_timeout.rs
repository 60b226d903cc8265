//! A streamed request body that gives up on a client that stopped sending:
//! an upload may take as long as it needs while data flows, but a stalled
//! one ends instead of holding its stream, its connection's flow-control
//! window and the worker writing it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::Body;

/// `inner`, failing with `TimedOut` once it has kept its reader waiting for
/// `idle` without a frame. Only time spent waiting on the sender counts: a
/// reader that pauses (backpressure downstream) does not run the clock.
pub struct IdleTimeout {
    inner: Body,
    idle: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeout {
    /// Wraps `inner`.
    pub fn new(inner: Body, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            waiting: None,
        }
    }
}

impl HttpBody for IdleTimeout {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.waiting = None;
                        Poll::Ready(Some(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the client sent nothing for {}s", idle.as_secs()),
                        ))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn channel() -> (
        tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        Body,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        (
            tx,
            crate::body::stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
    }

    #[tokio::test]
    async fn a_flowing_body_passes_and_a_stalled_one_fails_after_the_idle_time() {
        let idle = Duration::from_secs(2);
        let (tx, body) = channel();
        let mut body = IdleTimeout::new(body, idle);
        // Data every 100 ms for longer than the idle time: never cut off.
        let sender = tokio::spawn(async move {
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
            }
            // Then silence, the sender kept open.
            tx
        });
        for _ in 0..30 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let _open = sender.await.unwrap();
        let started = std::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= idle, "{:?}", started.elapsed());
        assert!(err.to_string().contains("sent nothing for 2s"), "{err}");
    }

    #[tokio::test]
    async fn a_reader_that_pauses_does_not_run_the_clock() {
        let (tx, body) = channel();
        let mut body = IdleTimeout::new(body, Duration::from_secs(1));
        tx.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        body.frame().await.unwrap().unwrap();
        // The reader is away for longer than the idle time (backpressure
        // downstream); the sender's next chunk comes soon after it is back.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3300)).await;
            tx.send(Ok(Bytes::from_static(b"b"))).await.unwrap();
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "b");
        sender.await.unwrap();
        assert!(body.frame().await.is_none());
    }
}
