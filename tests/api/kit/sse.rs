//! Server-sent events read from a `reqwest` answer's body.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;

/// An event stream being read: the body and what arrived but was not read.
pub struct EventReader<S> {
    stream: S,
    buf: String,
}

impl<S> EventReader<S>
where
    S: futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    /// Reads events from `stream`.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: String::new(),
        }
    }

    /// The next named event (name, JSON data; comments and keep-alives
    /// skipped), or `None` if none arrives within `limit` or the stream ends.
    pub async fn next(&mut self, limit: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut name = None;
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if let Some(name) = name {
                    return Some((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// Reads until an event named `want` arrives (its data), or `None` after
    /// `limit`.
    pub async fn until(&mut self, want: &str, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (name, data) = self.next(left).await?;
            if name == want {
                return Some(data);
            }
        }
    }
}
