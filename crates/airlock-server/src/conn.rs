//! The connection layer under the router: what `axum::serve` does not give, a
//! server facing slow or hostile clients needs.
//!
//! - **Head deadline**: hyper's `header_read_timeout` closes a connection whose
//!   request head is not complete `header_timeout_ms` after the connection became
//!   ready for it (accepted, or its previous response sent).
//! - **Keep-alive deadline**: a connection with no request under way and no byte of
//!   the next one is closed after `keepalive_timeout_ms` ([`Activity`]).
//! - **Body deadline**: a request body must arrive within `body_timeout_ms` plus one
//!   second per `min_transfer_bytes_per_s` bytes received ([`DeadlineBody`]); else
//!   the request is answered `408 body_timeout` and the connection closed.
//! - **Send deadline**: while the server has bytes the client does not take, the
//!   client must take `min_transfer_bytes_per_s` × `send_timeout_ms` in every
//!   `send_timeout_ms`, else the connection is closed ([`TimedIo`]). Only bytes
//!   *waiting on the client* count: a stream that waits for a run's next output
//!   has nothing to send and is never cut.
//!
//! The connection cap and the accept loop are in [`crate::serve`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use airlock_service::ServerSettings;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::error::ApiError;

/// The deadlines of one connection, from the settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    header: Duration,
    keepalive: Duration,
    body: Duration,
    send: Duration,
    min_rate: u64,
}

impl Deadlines {
    pub(crate) fn from_settings(s: &ServerSettings) -> Self {
        Deadlines {
            header: Duration::from_millis(s.header_timeout_ms),
            keepalive: Duration::from_millis(s.keepalive_timeout_ms),
            body: Duration::from_millis(s.body_timeout_ms),
            send: Duration::from_millis(s.send_timeout_ms),
            min_rate: s.min_transfer_bytes_per_s.max(1),
        }
    }
}

/// Serves one accepted connection until it ends, is closed by one of its
/// deadlines, or `closing` turns true (then in-flight requests finish first).
pub(crate) async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    d: Deadlines,
    mut closing: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let io = TokioIo::new(TimedIo::new(stream, d.send, d.min_rate));
    let act = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| handle(req, router.clone(), d, act.begin()));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(d.header).keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut shutting = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = activity.idle_for(d.keepalive), if !shutting => {
                // Closes at once if no byte of a next request has arrived; else the
                // request under way finishes (the head deadline still holds) and the
                // connection closes after it.
                conn.as_mut().graceful_shutdown();
                shutting = true;
            }
            _ = closing.wait_for(|c| *c), if !shutting => {
                conn.as_mut().graceful_shutdown();
                shutting = true;
            }
        }
    }
}

/// One request: its body under the body deadline, the response counted as activity
/// until it has been sent.
async fn handle(
    req: Request<Incoming>,
    router: Router,
    d: Deadlines,
    busy: Busy,
) -> Result<Response<Body>, Infallible> {
    let timed_out = Arc::new(AtomicBool::new(false));
    let req = req.map(|b| Body::new(DeadlineBody::new(b, d.body, d.min_rate, timed_out.clone())));
    let resp = router.oneshot(req).await.unwrap_or_else(|e| match e {});
    let resp = if timed_out.load(Ordering::Relaxed) { body_timeout_response(d) } else { resp };
    Ok(resp.map(|b| Body::new(BusyBody { inner: b, _busy: busy })))
}

/// `408` for a body that did not arrive in time; the connection is closed after it.
fn body_timeout_response(d: Deadlines) -> Response<Body> {
    let mut r = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body arrived too slowly: it must arrive within {} s plus 1 s for every {} bytes (body_timeout_ms, min_transfer_bytes_per_s); send it at once",
            d.body.as_secs_f64(),
            d.min_rate
        ),
    )
    .into_response();
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Whether a connection has a request under way, and since when it has not.
#[derive(Clone)]
struct Activity(Arc<watch::Sender<ActivityState>>);

#[derive(Clone, Copy)]
struct ActivityState {
    busy: usize,
    idle_since: Instant,
}

/// Counts one request as under way until dropped (with its response body).
struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        (self.0).0.send_modify(|s| {
            s.busy = s.busy.saturating_sub(1);
            if s.busy == 0 {
                s.idle_since = Instant::now();
            }
        });
    }
}

impl Activity {
    fn new() -> Self {
        Activity(Arc::new(watch::Sender::new(ActivityState { busy: 0, idle_since: Instant::now() })))
    }

    fn begin(&self) -> Busy {
        self.0.send_modify(|s| s.busy += 1);
        Busy(self.clone())
    }

    /// Completes once the connection has had no request under way for `d`.
    async fn idle_for(&self, d: Duration) {
        let mut rx = self.0.subscribe();
        loop {
            let s = *rx.borrow_and_update();
            if s.busy > 0 {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(s.idle_since + d) => return,
                r = rx.changed() => if r.is_err() { return std::future::pending().await },
            }
        }
    }
}

/// A response body that keeps its request counted as activity until it is sent.
struct BusyBody {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a request body that did not arrive in time.
#[derive(Debug)]
pub struct BodyTimeout {
    received: u64,
}

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body arrived too slowly ({} bytes received by its deadline)", self.received)
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that must arrive by `start + grace + received / rate`: a trickle
/// slower than `rate` runs out of time, a body at any faster rate never does.
pub(crate) struct DeadlineBody {
    inner: Incoming,
    start: Instant,
    grace: Duration,
    rate: u64,
    received: u64,
    // Made on the first wait only: a body that is already there costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl DeadlineBody {
    fn new(inner: Incoming, grace: Duration, rate: u64, timed_out: Arc<AtomicBool>) -> Self {
        DeadlineBody { inner, start: Instant::now(), grace, rate, received: 0, sleep: None, timed_out }
    }

    fn deadline(&self) -> Instant {
        self.start + self.grace + Duration::from_secs_f64(self.received as f64 / self.rate as f64)
    }

    fn fail(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.timed_out.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(Box::new(BodyTimeout { received: self.received }))))
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout { received: this.received }))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if Instant::now() > this.deadline() {
                        return this.fail();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline();
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    return this.fail();
                }
                Poll::Pending
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

/// A socket whose writes time out when the client stops taking bytes.
///
/// When a write would block, a period of `window` starts; if by its end the client
/// has taken fewer than `max(1, rate × window)` bytes, writes fail with `TimedOut`
/// and hyper closes the connection. The period ends when hyper has handed every
/// byte to the kernel (its flush), so only time spent waiting on the client counts.
pub(crate) struct TimedIo<T> {
    inner: T,
    window: Duration,
    min_bytes: u64,
    stall: Option<Stall>,
}

struct Stall {
    sleep: Pin<Box<Sleep>>,
    progress: u64,
}

impl<T> TimedIo<T> {
    pub(crate) fn new(inner: T, window: Duration, rate: u64) -> Self {
        let min_bytes = ((rate as f64) * window.as_secs_f64()).max(1.0) as u64;
        TimedIo { inner, window, min_bytes, stall: None }
    }

    fn written(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if let Some(s) = &mut self.stall {
                    s.progress += n as u64;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let window = self.window;
                let s = self
                    .stall
                    .get_or_insert_with(|| Stall { sleep: Box::pin(tokio::time::sleep(window)), progress: 0 });
                while s.sleep.as_mut().poll(cx).is_ready() {
                    if s.progress < self.min_bytes {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the client took {} bytes in {:?} while the server waited to send (the minimum is {})",
                                s.progress, window, self.min_bytes
                            ),
                        )));
                    }
                    s.progress = 0;
                    let next = Instant::now() + window;
                    s.sleep.as_mut().reset(next);
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.written(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        // Everything hyper had is with the kernel: nothing waits on the client now.
        self.stall = None;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
