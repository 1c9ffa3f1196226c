//! The agent's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, served by
//! hyper on a thread of its own.
//!
//! Why a thread and not a task on the agent's runtime: a round blocks the
//! thread it runs on (SQLite's busy wait and the node's lock waits, up to
//! [`crate::files::LOCK_WAIT`] each; bpf and netlink syscalls), so a task
//! beside it would stall with it, and a probe would time out exactly when
//! the store is slow. On its own thread (with its own single-threaded
//! runtime) a scrape never waits for a round, and a round never for a
//! scrape: they share only [`Status`], a copy under a mutex.

use std::{
    convert::Infallible,
    net::TcpListener,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::warn;

use super::{metrics, status::Status};
use crate::dataplane::Counters;

/// Connections served at once; more wait to be accepted. Prometheus and
/// kubelet need one or two each.
const MAX_CONNECTIONS: usize = 16;

/// A client gets this long to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A kept-alive connection is closed (after its current response) this long
/// after it opened, so idle clients cannot hold every slot for good.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// What every request reads.
struct Endpoint {
    status: Arc<Status>,
    /// Where the per-end counters are pinned.
    pin_root: PathBuf,
}

/// Serves `listener` on a new thread until the process exits.
pub fn spawn(listener: TcpListener, status: Arc<Status>, pin_root: PathBuf) -> anyhow::Result<()> {
    listener.set_nonblocking(true).context("making the metrics socket non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let endpoint = Arc::new(Endpoint { status, pin_root });
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(serve(listener, endpoint)))
        .context("starting the metrics thread")?;
    Ok(())
}

/// Accepts connections, each answered on a task of its own.
async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => return warn!(%error, "the metrics socket"),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "accepting a metrics connection");
                // EMFILE and the like: give the process a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            connection(stream, endpoint).await;
            drop(slot);
        });
    }
}

/// One HTTP/1.1 connection, closed gracefully once its lifetime is up.
async fn connection(stream: tokio::net::TcpStream, endpoint: Arc<Endpoint>) {
    let service = service_fn(move |request| {
        let endpoint = endpoint.clone();
        async move { Ok::<_, Infallible>(answer(&request, &endpoint)) }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = served {
        // A client that hung up or stalled is its own business.
        tracing::debug!(%error, "a metrics connection ended");
    }
}

/// Routes one request: GET or HEAD of the three paths, 404 for any other
/// path, 405 for any other method.
fn answer(request: &Request<Incoming>, endpoint: &Endpoint) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, format!("no {path} here: try /metrics, /healthz or /readyz\n"));
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into());
        response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let (snapshot, health) = endpoint.status.read();
    match path {
        "/healthz" => verdict(health.alive(Instant::now(), endpoint.status.stall_window), "alive"),
        "/readyz" => verdict(health.ready(), "ready"),
        _ => {
            let counters = open_counters(endpoint);
            let read = |ifindex| counters.as_ref().and_then(|counters| read_counters(counters, ifindex));
            let body = metrics::render(&endpoint.status.node, &snapshot, &health, read);
            let mut response = text(StatusCode::OK, body);
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(metrics::CONTENT_TYPE));
            response
        }
    }
}

/// 200 with `ok_word`, or 503 with the reason.
fn verdict(outcome: Result<(), String>, ok_word: &str) -> Response<Full<Bytes>> {
    match outcome {
        Ok(()) => text(StatusCode::OK, format!("{ok_word}\n")),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not {ok_word}: {why}\n")),
    }
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The counters, opened read-only per scrape: the agent may have pinned
/// new maps since the last one. `None` (logged) when they cannot be.
fn open_counters(endpoint: &Endpoint) -> Option<Counters> {
    Counters::open(&endpoint.pin_root)
        .inspect_err(|error| warn!(%error, "a scrape could not open the counters"))
        .ok()
        .flatten()
}

fn read_counters(counters: &Counters, ifindex: u32) -> Option<ratchet_common::EndStats> {
    counters
        .get(ifindex)
        .inspect_err(|error| warn!(%error, ifindex, "a scrape could not read an end's counters"))
        .ok()?
}
