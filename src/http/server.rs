//! The connection layer: accepts TCP connections and serves HTTP/1.1 (and
//! HTTP/2, by preface) on them with hyper, with guards against slow and
//! idle clients.
//!
//! `axum::serve` offers no knobs for these, and a connection that sends part
//! of its headers and then nothing would stay open for ever (measured: 4,000
//! such connections held for 65 s; a few hundred exhaust a 512-descriptor
//! limit and the node refuses everyone, `/healthz` included). So the accept
//! loop is ours, built from hyper-util's parts:
//!
//! - **header-read timeout** (`--header-timeout-ms`, 10 s): a connection
//!   that has sent bytes of a request head and not finished it in time is
//!   closed (slowloris). Watched here, by the bytes the socket reads, rather
//!   than by hyper's own `header_read_timeout`: that arms a timer for every
//!   request head, which cost about 2k instructions per request (a fifth of
//!   a `/healthz`); this costs two relaxed loads per read;
//! - **idle timeout** (`--idle-timeout-ms`, 60 s): a connection with no
//!   request in flight for that long is closed (a streaming answer such as
//!   server-sent events counts as in flight until its body ends);
//! - **a cap on open connections** (`--max-connections`, by default the
//!   open-file limit less a reserve): at the cap, the connection idle the
//!   longest is closed to make room; if none is idle, the new one is;
//! - **TLS** (`--tls-cert`, `--tls-key`): rustls, HTTP/2 and HTTP/1.1
//!   offered by ALPN; the handshake happens in the connection's task and
//!   counts as head bytes, so a slow handshake meets the head timeout too;
//! - **self-wakes polled inline** ([`Coalesced`]): a connection task that
//!   hyper wakes while it runs is polled again at once rather than queued;
//! - **graceful stop**: the listener closes, every connection finishes the
//!   request it is serving (hyper's graceful shutdown), then the call
//!   returns.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response};
use dashmap::DashMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::coalesce::Coalesced;

/// Limits on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Longest a client may take to send a request's head.
    pub header_timeout: Duration,
    /// Longest a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Most connections open at once (0: derived from the open-file limit).
    pub max_connections: usize,
    /// Hand each request its connection's peer address (axum's
    /// `ConnectInfo<SocketAddr>` extension), for the client IP.
    pub peer_addr: bool,
    /// The `port` label of the open-connections gauge (`api`, `ops`).
    pub port: &'static str,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 0,
            peer_addr: false,
            port: "api",
        }
    }
}

/// Longest a stop waits for connections to finish what they serve.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// How long a stop lets hyper close connections by itself before it closes
/// those whose request head is still arriving.
const HEAD_GRACE: Duration = Duration::from_millis(500);

/// Descriptors kept free of connections: the database pools, Redis,
/// RabbitMQ, the store's files, logs.
const RESERVED_DESCRIPTORS: u64 = 128;

/// Raises the soft open-file limit to the hard limit and returns the
/// connection cap it allows (`requested`, if set, is used as is).
pub fn connection_cap(requested: usize) -> usize {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    let raised = rlimit::increase_nofile_limit(hard).unwrap_or(soft);
    tracing::info!(
        soft_before = soft,
        hard,
        soft_now = raised,
        "open-file limit"
    );
    if requested > 0 {
        return requested;
    }
    raised.saturating_sub(RESERVED_DESCRIPTORS).max(16) as usize
}

/// The listen backlog asked for (the kernel caps it at `somaxconn`): a
/// flash crowd connects in a burst, and a full accept queue makes the
/// kernel drop handshakes, which clients retry only after a second or more.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a deep accept queue ([`LISTEN_BACKLOG`]).
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// One open connection.
struct Conn {
    /// The registry's coarse clock (ms since its epoch, advanced by the
    /// sweeper): a per-request clock read would cost more than the rest of
    /// the bookkeeping.
    clock: Arc<AtomicU64>,
    /// When it last finished a request (or opened), as ms since `epoch`.
    last_active_ms: AtomicU64,
    /// When the bytes of a request head began to arrive with nothing in
    /// flight (ms since `epoch`, plus one; 0 = none pending).
    head_since_ms: AtomicU64,
    /// Requests (and streaming answers) in flight.
    in_flight: AtomicU32,
    /// Cancelled to close it at once.
    close: CancellationToken,
}

impl Conn {
    fn new(clock: Arc<AtomicU64>) -> Self {
        Self {
            last_active_ms: AtomicU64::new(clock.load(Ordering::Relaxed)),
            clock,
            head_since_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            close: CancellationToken::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Bytes arrived: with nothing in flight they begin a request head.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since_ms.load(Ordering::Relaxed) == 0
        {
            self.head_since_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }
}

/// The socket of one connection, telling its [`Conn`] when bytes arrive.
struct Watched<I> {
    tcp: I,
    conn: Arc<Conn>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.bytes_read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The open connections.
struct Registry {
    epoch: Instant,
    /// ms since `epoch`, as of the last sweep.
    clock: Arc<AtomicU64>,
    conns: DashMap<u64, Arc<Conn>>,
}

impl Registry {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            clock: Arc::new(AtomicU64::new(0)),
            conns: DashMap::new(),
        }
    }

    /// Reads the clock and advances the coarse one.
    fn now_ms(&self) -> u64 {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.clock.store(now, Ordering::Relaxed);
        now
    }

    /// Closes the connection idle the longest; false if none is idle.
    fn evict_oldest_idle(&self) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0 && !c.close.is_cancelled())
            // The clock is coarse: among equals, the oldest connection.
            .min_by_key(|c| (c.last_active_ms.load(Ordering::Relaxed), *c.key()))
            .map(|c| c.value().clone());
        match oldest {
            Some(conn) => {
                conn.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Closes every connection whose request head is still arriving (with
    /// nothing in flight), or every one.
    ///
    /// A connection with nothing in flight and no head arriving is left to
    /// hyper's graceful shutdown: it may still be writing the answer of a
    /// request the app has finished (an order stored, its `201` on the
    /// way), and hyper closes it once that is written.
    fn close_all(&self, busy_too: bool) {
        for c in &self.conns {
            let head_arriving = c.in_flight.load(Ordering::Acquire) == 0
                && c.head_since_ms.load(Ordering::Relaxed) != 0;
            if busy_too || head_arriving {
                c.close.cancel();
            }
        }
    }

    /// Closes every connection idle for longer than `idle`, and every one
    /// whose request head has taken longer than `head`.
    fn close_idle(&self, idle: Duration, head: Duration) {
        let now = self.now_ms();
        let (idle, head) = (idle.as_millis() as u64, head.as_millis() as u64);
        for c in &self.conns {
            if c.in_flight.load(Ordering::Acquire) != 0 || c.close.is_cancelled() {
                continue;
            }
            let head_since = c.head_since_ms.load(Ordering::Relaxed);
            let reason = if head_since != 0 && now.saturating_sub(head_since - 1) > head {
                "header_timeout"
            } else if now.saturating_sub(c.last_active_ms.load(Ordering::Relaxed)) > idle {
                "idle"
            } else {
                continue;
            };
            c.close.cancel();
            metrics::counter!("flashsale_connections_closed_total", "reason" => reason)
                .increment(1);
        }
    }
}

/// Marks a request (or a streaming answer) of a connection finished.
struct InFlight {
    conn: Arc<Conn>,
}

impl InFlight {
    fn start(conn: &Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.head_since_ms.store(0, Ordering::Relaxed);
        Self { conn: conn.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn
            .last_active_ms
            .store(self.conn.now_ms(), Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A streaming answer's body, holding its connection's [`InFlight`] until
/// it ends.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The app's service for one connection: counts what is in flight.
#[derive(Clone)]
struct PerConnection<S> {
    inner: S,
    conn: Arc<Conn>,
    /// The peer, when requests should carry it.
    peer: Option<SocketAddr>,
}

pin_project_lite::pin_project! {
    /// [`PerConnection`]'s answer: the app's, with the connection's
    /// [`InFlight`] released when it is written — or, for a streaming body,
    /// when the body ends.
    struct Answer<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        let in_flight = this.in_flight.take();
        // A body of known length is written out at once; a streaming one
        // (server-sent events) keeps the connection busy until it ends.
        if response.body().size_hint().exact().is_some() {
            drop(in_flight);
            return Poll::Ready(Ok(response));
        }
        Poll::Ready(Ok(response.map(|inner| match in_flight {
            Some(in_flight) => Body::new(Tracked {
                inner,
                _in_flight: in_flight,
            }),
            None => inner,
        })))
    }
}

impl<S> Service<Request<Incoming>> for PerConnection<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.conn);
        let mut req = req.map(Body::new);
        if let Some(peer) = self.peer {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        Answer {
            inner: self.inner.call(req),
            in_flight: Some(in_flight),
        }
    }
}

/// Loads a certificate chain and its private key (PEM files) into a rustls
/// acceptor that offers HTTP/2 and HTTP/1.1 by ALPN.
///
/// # Errors
/// When a file cannot be read or parsed, or the key does not fit.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the TLS certificate {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS private key {}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS key does not fit the certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops
/// accepting, lets every connection finish what it is serving, and
/// returns. With `tls`, every connection is TLS.
///
/// # Errors
/// Never today; the type leaves room for a listener that fails for good.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    settings: ConnectionSettings,
    max_connections: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let registry = Arc::new(Registry::new());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No timer for HTTP/1: hyper would arm one per request head (the head
    // timeout is watched by the sweeper instead, see the module docs).
    builder.http1().header_read_timeout(None).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let sweeper = {
        let registry = registry.clone();
        let (idle, head, port) = (
            settings.idle_timeout,
            settings.header_timeout,
            settings.port,
        );
        // A tenth of the head timeout, within 100 ms..1 s.
        let every = (head / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                registry.close_idle(idle, head);
                metrics::gauge!("flashsale_connections_open", "port" => port)
                    .set(registry.conns.len() as f64);
            }
        })
    };
    let mut next_id: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (or a connection reset before it
                    // was accepted): wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if registry.conns.len() >= max_connections && !registry.evict_oldest_idle() {
            metrics::counter!("flashsale_connections_refused_total").increment(1);
            drop(tcp);
            continue;
        }
        if registry.conns.len() >= max_connections {
            metrics::counter!("flashsale_connections_closed_total", "reason" => "cap").increment(1);
        }
        // Small JSON answers: send them now rather than wait for more.
        let _ = tcp.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let conn = Arc::new(Conn::new(registry.clock.clone()));
        registry.conns.insert(id, conn.clone());
        let svc = PerConnection {
            inner: service.clone(),
            conn: conn.clone(),
            peer: settings.peer_addr.then_some(peer),
        };
        let io = Watched {
            tcp,
            conn: conn.clone(),
        };
        let registry = registry.clone();
        match &tls {
            None => {
                let served = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(io),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .into_owned();
                let served = graceful.watch(served);
                tokio::spawn(Coalesced::new(async move {
                    tokio::select! {
                        _ = served => {}
                        // Dropping the connection closes its socket.
                        () = conn.close.cancelled() => {}
                    }
                    registry.conns.remove(&id);
                }));
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task; the head
                // timeout (its bytes count) and the registry bound it.
                let handshake = acceptor.accept(io);
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(Coalesced::new(async move {
                    tokio::select! {
                        tls = handshake => match tls {
                            Ok(stream) => {
                                let served = builder
                                    .serve_connection_with_upgrades(
                                        TokioIo::new(stream),
                                        hyper_util::service::TowerToHyperService::new(svc),
                                    )
                                    .into_owned();
                                tokio::select! {
                                    _ = watcher.watch(served) => {}
                                    () = conn.close.cancelled() => {}
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                metrics::counter!("flashsale_tls_handshake_failures_total").increment(1);
                            }
                        },
                        () = conn.close.cancelled() => {}
                    }
                    registry.conns.remove(&id);
                }));
            }
        }
    }
    drop(listener);
    sweeper.abort();
    // hyper closes idle connections at once and the others once their
    // answer is written. A connection whose next head is still arriving
    // has nothing to finish: closed after `HEAD_GRACE`, so slow clients
    // cannot hold up a stop. The rest finish what they serve, for at most
    // `STOP_GRACE`.
    let stopped = graceful.shutdown();
    tokio::pin!(stopped);
    if tokio::time::timeout(HEAD_GRACE, &mut stopped).await.is_ok() {
        return Ok(());
    }
    registry.close_all(false);
    if tokio::time::timeout(STOP_GRACE, &mut stopped)
        .await
        .is_err()
    {
        tracing::warn!("connections still busy after the stop's grace period; closing them");
        registry.close_all(true);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new()
    }

    fn conn_on(r: &Registry, last_active_ms: u64, in_flight: u32) -> Arc<Conn> {
        let c = Conn::new(r.clock.clone());
        c.last_active_ms.store(last_active_ms, Ordering::Relaxed);
        c.in_flight.store(in_flight, Ordering::Relaxed);
        Arc::new(c)
    }

    #[test]
    fn the_cap_closes_the_connection_idle_the_longest() {
        let r = registry();
        let (busy, old, young) = (conn_on(&r, 0, 1), conn_on(&r, 5, 0), conn_on(&r, 9, 0));
        r.conns.insert(1, busy.clone());
        r.conns.insert(2, old.clone());
        r.conns.insert(3, young.clone());
        assert!(r.evict_oldest_idle());
        assert!(old.close.is_cancelled());
        assert!(!busy.close.is_cancelled() && !young.close.is_cancelled());
        assert!(r.evict_oldest_idle());
        assert!(young.close.is_cancelled());
        // Only a busy one is left: nothing to close.
        assert!(!r.evict_oldest_idle());
        assert!(!busy.close.is_cancelled());
    }

    #[test]
    fn only_connections_idle_past_the_timeout_are_closed() {
        let r = registry();
        let now = r.now_ms();
        let (stale, fresh, busy) = (
            conn_on(&r, 0, 0),
            conn_on(&r, now + 1_000_000, 0),
            conn_on(&r, 0, 2),
        );
        r.conns.insert(1, stale.clone());
        r.conns.insert(2, fresh.clone());
        r.conns.insert(3, busy.clone());
        std::thread::sleep(Duration::from_millis(5));
        r.close_idle(Duration::from_millis(1), Duration::from_secs(60));
        assert!(stale.close.is_cancelled());
        assert!(!fresh.close.is_cancelled());
        assert!(!busy.close.is_cancelled());
    }

    #[test]
    fn a_head_that_takes_too_long_is_closed_and_a_dispatched_one_is_not() {
        let r = registry();
        let now = r.now_ms();
        let (slow, served) = (conn_on(&r, now, 0), conn_on(&r, now, 0));
        r.conns.insert(1, slow.clone());
        r.conns.insert(2, served.clone());
        slow.bytes_read();
        served.bytes_read();
        // The second one's head completed: its request was dispatched.
        drop(InFlight::start(&served));
        std::thread::sleep(Duration::from_millis(20));
        r.close_idle(Duration::from_secs(60), Duration::from_millis(10));
        assert!(slow.close.is_cancelled());
        assert!(!served.close.is_cancelled());
    }
}
