//! Serving the HTTP router on a listener without letting clients hold the daemon's
//! resources: at most [`Limits::max_connections`] connections per listener (one more is
//! answered `503` and closed at once), request headers within [`Limits::header_timeout`]
//! (an idle keep-alive connection counts as waiting for headers), each request handled
//! within [`Limits::request_timeout`] (body included). Running out of file descriptors
//! while accepting is logged (at a bounded rate) and retried, never fatal.
//!
//! The TCP and unix listeners get separate limits, so that a flood of TCP clients never
//! locks the operator out of the unix socket.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use vringswitch_ports::log_limit::LogLimiter;

/// What one listener allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 128,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The answer to a connection beyond the limit, the API's JSON error body.
fn busy_response() -> Vec<u8> {
    let body = "{\"error\":\"busy\",\"detail\":\"too many open connections to this API; try again \
                later\"}\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on a TCP listener until it fails for good.
pub async fn serve_tcp(listener: tokio::net::TcpListener, app: Router, limits: Limits) {
    serve(
        || async { listener.accept().await.map(|(s, _)| s) },
        app,
        limits,
        "TCP",
    )
    .await
}

/// Serves `app` on a unix listener until it fails for good.
pub async fn serve_unix(listener: tokio::net::UnixListener, app: Router, limits: Limits) {
    serve(
        || async { listener.accept().await.map(|(s, _)| s) },
        app,
        limits,
        "unix socket",
    )
    .await
}

async fn serve<S, F, Fut>(mut accept: F, app: Router, limits: Limits, what: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        request_deadline,
    ));
    let mut exhausted = LogLimiter::new(Duration::from_secs(10));
    let mut refused = LogLimiter::new(Duration::from_secs(10));
    loop {
        let stream = match accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in the backlog and
                // is accepted once descriptors are free again. Others (ECONNABORTED) are
                // the client's and concern only it.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    if let Some(suppressed) = exhausted.check() {
                        tracing::warn!(listener = %what, error = %e, suppressed,
                            "cannot accept an API connection: the daemon is out of file \
                             descriptors or memory; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(suppressed) = refused.check() {
                tracing::warn!(
                    listener = %what,
                    limit = limits.max_connections,
                    suppressed,
                    "API connection refused: too many open connections"
                );
            }
            tokio::spawn(async move {
                let mut stream = stream;
                let busy = busy_response();
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&busy)).await;
            });
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let open = OpenConnection::new();
        tokio::spawn(async move {
            let _open = open;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
            drop(slot);
        });
    }
}

/// API connections open now, over every listener.
static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One open API connection, counted in [`open_connections`] while it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> OpenConnection {
        OPEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How many API connections are open (being served): a process that was replaced waits
/// for them (the upgrade's own answer among them) before it exits.
pub fn open_connections() -> usize {
    OPEN.load(std::sync::atomic::Ordering::SeqCst)
}

/// Ends a request (reading its body included) that takes longer than the deadline.
async fn request_deadline(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({
                "error": "timeout",
                "detail": format!("the request took longer than {} s", deadline.as_secs()),
            })),
        )
            .into_response(),
    }
}
