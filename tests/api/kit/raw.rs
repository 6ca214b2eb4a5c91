//! Raw HTTP, for what reqwest will not send or cannot hold open: bytes
//! written by hand ([`raw_http`]), a purchase parked in the server with
//! `Expect: 100-continue` ([`SlowPurchase`]), and reading such answers
//! ([`parse_raw_answer`]).

use std::time::Duration;

use serde_json::Value;

use super::app::REQUEST_TIMEOUT;
use super::client::token;

/// Sends raw bytes (a whole HTTP/1.1 request ending in `Connection: close`)
/// and returns the raw answer, for what reqwest will not send.
pub async fn raw_http(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connecting");
    // The server may answer and close before reading everything we send.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("no answer in time");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A purchase sent by hand with `Expect: 100-continue`: once
/// [`SlowPurchase::start`] returns, the server has answered `100 Continue`,
/// so the request holds a place in the server (its handler is reading the
/// body) until [`SlowPurchase::finish`] sends the body.
pub struct SlowPurchase {
    stream: tokio::net::TcpStream,
}

const SLOW_BODY: &[u8] = br#"{"quantity": 1}"#;

impl SlowPurchase {
    /// Sends the head of a one-unit purchase by `user` and waits for `100 Continue`.
    pub async fn start(port: u16, sale_id: &str, user: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = format!(
            "POST /api/v1/sales/{sale_id}/purchase HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            token(user),
            SLOW_BODY.len()
        );
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connecting");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let read_head = async {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.expect("reading the answer");
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read_head)
            .await
            .expect("no 100 Continue within 10 s");
        assert!(
            buf.starts_with(b"HTTP/1.1 100"),
            "expected 100 Continue: {}",
            String::from_utf8_lossy(&buf)
        );
        Self { stream }
    }

    /// Sends the body and returns the final status code and JSON body.
    pub async fn finish(mut self) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The server may already have answered (a timeout) and closed.
        let _ = self.stream.write_all(SLOW_BODY).await;
        let mut answer = Vec::new();
        tokio::time::timeout(REQUEST_TIMEOUT, self.stream.read_to_end(&mut answer))
            .await
            .expect("no answer in time")
            .expect("reading the answer");
        parse_raw_answer(&String::from_utf8_lossy(&answer))
    }
}

/// The status and JSON body of a raw HTTP/1.1 answer (with a fixed length).
pub fn parse_raw_answer(answer: &str) -> (u16, Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header block: {answer}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (status, body)
}
