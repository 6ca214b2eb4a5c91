//! A lean HTTP/1.1 client for the floods: keep-alive connections that
//! write a request formatted straight into a reused buffer and read the
//! answer with `httparse`.
//!
//! Written by hand because a load tool must cost less per request than the
//! server it measures, and shares its two cores: reqwest (over hyper's
//! pooled client) builds a request object and a header map, hands each
//! request to a connection task and back through channels, and so costs a
//! little more for every header and body a request shape adds. The shapes
//! benchmark compares a purchase with a JSON body and an `Idempotency-Key`
//! with a bare `GET /healthz`; with reqwest the ratio measured the client's
//! extra work as much as the server's. This is what `wrk` does: the bytes of
//! a request are written as they are, one task per exchange, nothing in
//! between. The response side is `httparse` (hyper's own parser), with
//! `Content-Length` and chunked bodies; anything else is an error.
//!
//! Only plain `http://` targets: TLS floods keep reqwest
//! ([`crate::load::Http::over_wire`] leaves them alone).

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use httparse::Status;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use url::Url;

/// Response headers `httparse` reads; more is an error (servers send ~5).
const MAX_HEADERS: usize = 32;
/// Largest response head accepted before the answer counts as malformed.
const MAX_HEAD: usize = 64 * 1024;

/// How an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// No complete answer within the timeout.
    Timeout,
    /// The connection failed or the answer was not HTTP/1.1.
    Transport(String),
}

/// One server's keep-alive connections and how to address it.
#[derive(Debug)]
pub struct Wire {
    /// `host:port` to connect to.
    address: String,
    /// `METHOD path HTTP/1.1\r\nHost: …\r\n` of every request.
    head: Vec<u8>,
    /// Idle connections; a request takes one (or opens one) and gives it
    /// back once its answer was read in full.
    idle: Mutex<Vec<Conn>>,
    timeout: Duration,
}

impl Wire {
    /// Requests `method url`, or `None` when `url` is not plain `http://`.
    pub fn new(method: &str, url: &Url, timeout: Duration) -> Option<Self> {
        if url.scheme() != "http" {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        Some(Self {
            address: format!("{host}:{port}"),
            head: format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes(),
            idle: Mutex::new(Vec::new()),
            timeout,
        })
    }

    /// Sends one request and reads its answer: `rest` appends what follows
    /// the request line and `Host` (more headers, the blank line, a body).
    ///
    /// # Errors
    /// When no complete answer came back in time; the connection is then
    /// closed, as it may still carry part of the answer.
    pub async fn send(&self, rest: impl FnOnce(&mut Vec<u8>)) -> Result<(u16, Bytes), Failure> {
        let idle = lock(&self.idle).pop();
        let exchange = async {
            let mut conn = match idle {
                Some(conn) => conn,
                None => Conn::open(&self.address).await?,
            };
            conn.request.clear();
            conn.request.extend_from_slice(&self.head);
            rest(&mut conn.request);
            let (status, body, keep) = conn.exchange().await?;
            Ok::<_, io::Error>((conn, status, body, keep))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((conn, status, body, keep))) => {
                if keep {
                    lock(&self.idle).push(conn);
                }
                Ok((status, body))
            }
            Ok(Err(e)) => Err(Failure::Transport(e.to_string())),
            Err(_) => Err(Failure::Timeout),
        }
    }
}

/// Locks `m`, also after a panic elsewhere (a pool stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One keep-alive connection and its buffers.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// The request being sent.
    request: Vec<u8>,
    /// Bytes read and not yet consumed.
    read: Vec<u8>,
}

/// What the head of an answer says about its body.
struct Head {
    status: u16,
    /// Bytes of the head, blank line included.
    len: usize,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

impl Conn {
    async fn open(address: &str) -> io::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            request: Vec::with_capacity(1024),
            read: Vec::with_capacity(4096),
        })
    }

    /// Writes the request and reads its answer: status, body, and whether
    /// the connection may carry another request.
    async fn exchange(&mut self) -> io::Result<(u16, Bytes, bool)> {
        self.stream.write_all(&self.request).await?;
        loop {
            let head = self.head().await?;
            if (100..200).contains(&head.status) {
                // An interim answer (`100 Continue`): the real one follows.
                self.read.drain(..head.len);
                continue;
            }
            let (body, close) = if head.chunked {
                (self.chunked(head.len).await?, head.close)
            } else if let Some(length) = head.content_length {
                let end = head.len + length;
                self.fill(end).await?;
                let body = Bytes::copy_from_slice(&self.read[head.len..end]);
                self.read.drain(..end);
                (body, head.close)
            } else if head.status == 204 || head.status == 304 {
                self.read.drain(..head.len);
                (Bytes::new(), head.close)
            } else {
                // No length: the body runs to the end of the connection.
                while self.stream.read_buf(&mut self.read).await? > 0 {}
                let body = Bytes::copy_from_slice(&self.read[head.len..]);
                (body, true)
            };
            return Ok((head.status, body, !close));
        }
    }

    /// Reads until a whole response head is buffered, and parses it.
    async fn head(&mut self) -> io::Result<Head> {
        loop {
            if !self.read.is_empty() {
                if let Some(head) = parse_head(&self.read)? {
                    return Ok(head);
                }
                if self.read.len() > MAX_HEAD {
                    return Err(invalid("the response head is too large"));
                }
            }
            self.more().await?;
        }
    }

    /// Reads a chunked body whose first chunk starts at `start`, and
    /// consumes it with its head.
    async fn chunked(&mut self, start: usize) -> io::Result<Bytes> {
        let mut body = Vec::new();
        let mut at = start;
        loop {
            let (used, size) = loop {
                match httparse::parse_chunk_size(&self.read[at..]) {
                    Ok(Status::Complete(found)) => break found,
                    Ok(Status::Partial) => self.more().await?,
                    Err(_) => return Err(invalid("a malformed chunk size")),
                }
            };
            at += used;
            let size = usize::try_from(size).map_err(|_| invalid("a chunk too large"))?;
            if size == 0 {
                // The last chunk: trailers (ignored) end with a blank line.
                loop {
                    if self.read[at..].starts_with(b"\r\n") {
                        at += 2;
                        break;
                    }
                    if let Some(end) = find(&self.read[at..], b"\r\n\r\n") {
                        at += end + 4;
                        break;
                    }
                    self.more().await?;
                }
                self.read.drain(..at);
                return Ok(Bytes::from(body));
            }
            self.fill(at + size + 2).await?;
            body.extend_from_slice(&self.read[at..at + size]);
            at += size + 2;
        }
    }

    /// Reads until at least `len` bytes are buffered.
    async fn fill(&mut self, len: usize) -> io::Result<()> {
        while self.read.len() < len {
            self.more().await?;
        }
        Ok(())
    }

    /// Reads what the server sent next; the end of the stream is an error.
    async fn more(&mut self) -> io::Result<()> {
        self.read.reserve(4096);
        if self.stream.read_buf(&mut self.read).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before the answer was complete",
            ));
        }
        Ok(())
    }
}

/// Parses the response head at the start of `buffer`, or `None` when it is
/// not all there yet.
fn parse_head(buffer: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buffer) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&format!("a malformed response head: {e}"))),
    };
    let status = response
        .code
        .ok_or_else(|| invalid("a response without a status"))?;
    let mut head = Head {
        status,
        len,
        content_length: None,
        chunked: false,
        close: response.version == Some(0),
    };
    for header in response.headers.iter() {
        let value = header.value;
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("a malformed Content-Length"))?;
            head.content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = contains_token(value, b"chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            head.close = contains_token(value, b"close");
        }
    }
    Ok(Some(head))
}

/// True when the comma-separated header `value` lists `token`.
fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request (read up to its blank line, no
    /// body) with the next of `answers`, then closes.
    async fn serve(answers: Vec<&'static [u8]>) -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                loop {
                    if let Some(end) = find(&seen, b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        break;
                    }
                    let mut chunk = [0u8; 1024];
                    let n = socket.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the client hung up");
                    seen.extend_from_slice(&chunk[..n]);
                }
                // Written in two parts, so the client has to read twice.
                let (a, b) = answer.split_at(answer.len() / 2);
                socket.write_all(a).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                socket.write_all(b).await.unwrap();
            }
        });
        Url::parse(&format!("http://127.0.0.1:{port}/x?y=1")).unwrap()
    }

    fn end_of_head(r: &mut Vec<u8>) {
        r.extend_from_slice(b"\r\n");
    }

    #[tokio::test]
    async fn reads_sized_chunked_and_empty_bodies_on_one_connection() {
        let url = serve(vec![
            b"HTTP/1.1 409 Conflict\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let wire = Wire::new("GET", &url, Duration::from_secs(5)).unwrap();
        assert_eq!(
            wire.head,
            b"GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:"
                .iter()
                .copied()
                .chain(format!("{}\r\n", url.port().unwrap()).into_bytes())
                .collect::<Vec<_>>()
        );
        let (status, body) = wire.send(end_of_head).await.unwrap();
        assert_eq!((status, &body[..]), (409, &b"hello"[..]));
        let (status, body) = wire.send(end_of_head).await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"abcde"[..]));
        let (status, body) = wire.send(end_of_head).await.unwrap();
        assert_eq!((status, &body[..]), (204, &b""[..]));
        assert_eq!(lock(&wire.idle).len(), 1, "the connection was kept alive");
    }

    #[tokio::test]
    async fn a_closed_connection_is_a_transport_failure_and_is_not_kept() {
        let url = serve(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
        let wire = Wire::new("GET", &url, Duration::from_secs(5)).unwrap();
        match wire.send(end_of_head).await {
            Err(Failure::Transport(e)) => assert!(e.contains("closed"), "{e}"),
            other => panic!("expected a transport failure, got {other:?}"),
        }
        assert!(lock(&wire.idle).is_empty());
    }

    #[tokio::test]
    async fn connection_close_and_garbage() {
        let url = serve(vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
        let wire = Wire::new("GET", &url, Duration::from_secs(5)).unwrap();
        assert_eq!(wire.send(end_of_head).await.unwrap().0, 200);
        assert!(
            lock(&wire.idle).is_empty(),
            "a closing connection is not reused"
        );

        let url = serve(vec![b"SMTP ready\r\n\r\n"]).await;
        let wire = Wire::new("GET", &url, Duration::from_secs(5)).unwrap();
        assert!(matches!(
            wire.send(end_of_head).await,
            Err(Failure::Transport(_))
        ));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let wire = Wire::new("GET", &url, Duration::from_millis(100)).unwrap();
        assert!(matches!(
            wire.send(end_of_head).await,
            Err(Failure::Timeout)
        ));
        drop(listener);
    }

    #[test]
    fn only_plain_http() {
        let url = Url::parse("https://example.com/").unwrap();
        assert!(Wire::new("GET", &url, Duration::from_secs(1)).is_none());
        assert!(contains_token(b"keep-alive, Close", b"close"));
        assert!(!contains_token(b"closed", b"close"));
    }
}
