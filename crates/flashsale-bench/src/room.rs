//! `--mode room`: many buyers waiting at once in a sale's waiting room.
//!
//! Creates a sale with a waiting room that starts `--starts-in-ms` from now
//! (default here 15 s, time to open every stream), opens one server-sent
//! event stream per buyer (`--users` of them) spread over loopback source
//! addresses 127.0.0.2… (`--source-ips`) to pass the ephemeral-port limit
//! of one address, and lets every admitted buyer buy with their pass at
//! once. Reports: streams open, the admission rate against the room's
//! (`--room-rate`), whether anyone was let in out of order (by the place
//! the server gave them), how long after the last sale each waiting buyer
//! heard "sold out", and the server's resident memory (`--server-pid`).
//!
//! Streams are read from raw TCP (HTTP/1.1, chunked): tens of thousands
//! of full HTTP clients would measure the load tool, not the server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::buyers::{bearer, Buyers};
use crate::BenchArgs;

/// What one buyer saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    place: Option<u64>,
    /// Server admission time (the pass's expiry minus its life), ms.
    admitted_ms: Option<i64>,
    pass: Option<String>,
    sold_out_at: Option<Instant>,
    failed: Option<String>,
}

/// The room run's report.
#[derive(Debug, Serialize)]
pub struct RoomSummary {
    /// Always `room`.
    pub mode: &'static str,
    /// Streams asked for.
    pub waiters: u32,
    /// Streams that opened (answered `200` with an event).
    pub streams_open: u64,
    /// Streams that failed to open or broke.
    pub stream_failures: u64,
    /// The first failures, and why.
    pub failures: Vec<String>,
    /// Seconds to open every stream.
    pub connect_secs: f64,
    /// The sale's stock.
    pub stock: u64,
    /// The room's rate, buyers per second.
    pub room_rate: u32,
    /// Buyers let in.
    pub admitted: u64,
    /// Admissions per second, first to last (server times).
    pub admission_rate: f64,
    /// `admission_rate / room_rate`.
    pub admission_rate_ratio: f64,
    /// Admitted buyers let in before someone with a lower place.
    pub out_of_order: u64,
    /// Admitted buyers whose place was never seen (let in before their
    /// first `waiting` event), left out of the order check.
    pub admitted_unplaced: u64,
    /// Purchases answered `201`.
    pub bought: u64,
    /// Waiting buyers told "sold out".
    pub told_sold_out: u64,
    /// Waiting buyers never told "sold out" (nor admitted).
    pub never_told: u64,
    /// From the last `201` to each waiting buyer's sold-out event, ms.
    pub sold_out_p50_ms: f64,
    /// Its 99th percentile.
    pub sold_out_p99_ms: f64,
    /// Its worst.
    pub sold_out_max_ms: f64,
    /// The server's peak resident memory during the run, MiB (with
    /// `--server-pid`).
    pub server_peak_rss_mib: Option<f64>,
    /// Peak resident memory per open stream, KiB.
    pub rss_per_stream_kib: Option<f64>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Pulls `event:`/`data:` pairs out of a chunked SSE byte stream (each
/// event arrives as one chunk, so chunk-size lines never split one).
fn events(buf: &mut Vec<u8>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let frame: Vec<u8> = buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&frame);
        let mut name = None;
        let mut data = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data = serde_json::from_str::<Value>(v.trim()).ok();
            }
        }
        if let (Some(n), Some(d)) = (name, data) {
            out.push((n, d));
        }
    }
    out
}

#[allow(clippy::too_many_arguments)] // one stream's whole context, read once
async fn stream(
    addr: SocketAddr,
    source: IpAddr,
    request: Vec<u8>,
    seen: Arc<std::sync::Mutex<Seen>>,
    buy: tokio::sync::mpsc::UnboundedSender<(usize, String)>,
    index: usize,
    pass_ttl_ms: i64,
    opened: Arc<AtomicU64>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let mut permit = Some(permit);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut tcp = socket.connect(addr).await?;
    tcp.write_all(&request).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let mut head_done = false;
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if !head_done {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            if !head.starts_with("HTTP/1.1 200") {
                bail!("{}", head.lines().next().unwrap_or(""));
            }
            buf.drain(..end + 4);
            head_done = true;
            opened.fetch_add(1, Ordering::Relaxed);
            // Open: the next stream may connect.
            permit.take();
        }
        for (name, data) in events(&mut buf) {
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            match name.as_str() {
                "waiting" if s.place.is_none() => s.place = data["place"].as_u64(),
                "admitted" => {
                    let expires = data["expires_at"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.timestamp_millis());
                    s.admitted_ms = expires.map(|e| e - pass_ttl_ms);
                    let pass = data["pass"].as_str().unwrap_or("").to_owned();
                    s.pass = Some(pass.clone());
                    let _ = buy.send((index, pass));
                    return Ok(());
                }
                "sold_out" => {
                    if s.sold_out_at.is_none() {
                        s.sold_out_at = Some(Instant::now());
                    }
                    return Ok(());
                }
                "ended" | "absent" => return Ok(()),
                _ => {}
            }
        }
    }
}

/// Runs the room load.
///
/// # Errors
/// Missing credentials, or a sale that cannot be created.
pub async fn run(args: &BenchArgs) -> anyhow::Result<RoomSummary> {
    let admin = args
        .admin_token
        .as_ref()
        .context("room mode needs --admin-token")?;
    let secret = args
        .jwt_secret
        .as_ref()
        .context("room mode needs --jwt-secret")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(args.timeout)
        .build()?;
    let base = args.url.as_str().trim_end_matches('/').to_owned();
    let addr: SocketAddr = tokio::net::lookup_host(format!(
        "{}:{}",
        args.url.host_str().unwrap_or("127.0.0.1"),
        args.url.port_or_known_default().unwrap_or(80)
    ))
    .await?
    .next()
    .context("resolving --url")?;
    let starts_in = if args.starts_in_ms == 0 {
        15_000
    } else {
        args.starts_in_ms
    };
    let pass_ttl_secs = 60;
    let starts_at = chrono::Utc::now() + chrono::Duration::milliseconds(starts_in as i64);
    let sale: Value = client
        .post(format!("{base}/api/v1/sales"))
        .header("authorization", bearer(admin.expose())?)
        .json(&json!({
            "item": "room bench",
            "stock": args.stock,
            "per_user_limit": 1,
            "starts_at": starts_at.to_rfc3339(),
            "front_door": {"waiting_room": {
                "admit_per_sec": args.room_rate,
                "pass_ttl_secs": pass_ttl_secs,
            }},
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let sale_id = sale["id"].as_str().context("sale id")?.to_owned();
    let run_id = format!("{:08x}", rand::random::<u32>());
    let buyers = Buyers::for_run(secret, &run_id, args.users).await?;
    let host = format!("{}:{}", addr.ip(), addr.port());
    let (buy_tx, mut buy_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let seen: Vec<Arc<std::sync::Mutex<Seen>>> = (0..args.users)
        .map(|_| Arc::new(std::sync::Mutex::new(Seen::default())))
        .collect();
    let opened = Arc::new(AtomicU64::new(0));
    // Buyers who were let in buy at once.
    let bought = Arc::new(AtomicU64::new(0));
    let last_sale = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let buyer_task = {
        let (client, base, sale_id) = (client.clone(), base.clone(), sale_id.clone());
        let (bought, last_sale) = (bought.clone(), last_sale.clone());
        let tokens: Vec<_> = (0..args.users).map(|n| buyers.token(n).cloned()).collect();
        tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(64));
            let mut tasks = tokio::task::JoinSet::new();
            while let Some((i, pass)) = buy_rx.recv().await {
                let Some(token) = tokens[i].clone() else {
                    continue;
                };
                let permit = limit.clone().acquire_owned().await;
                let (client, url) = (
                    client.clone(),
                    format!("{base}/api/v1/sales/{sale_id}/purchase"),
                );
                let (bought, last_sale) = (bought.clone(), last_sale.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    let resp = client
                        .post(url)
                        .header("authorization", token)
                        .header("x-flashsale-pass", pass)
                        .json(&json!({"quantity": 1}))
                        .send()
                        .await;
                    if matches!(&resp, Ok(r) if r.status().as_u16() == 201) {
                        bought.fetch_add(1, Ordering::Relaxed);
                        *last_sale.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    // Peak memory of the server, sampled.
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = args.server_pid.first().copied().map(|pid| {
        let peak = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let connect_started = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    let connecting = Arc::new(tokio::sync::Semaphore::new(1024));
    for (i, seen_i) in seen.iter().enumerate() {
        let Some(token) = buyers.token(i as u32) else {
            break;
        };
        let request = format!(
            "GET /api/v1/sales/{sale_id}/queue/events HTTP/1.1\r\nHost: {host}\r\n\
             Authorization: {}\r\nAccept: text/event-stream\r\n\r\n",
            token.to_str().unwrap_or("")
        )
        .into_bytes();
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % args.source_ips.max(1) as usize) as u8,
        ));
        let (seen_i, buy, opened) = (seen_i.clone(), buy_tx.clone(), opened.clone());
        let permit = connecting.clone().acquire_owned().await?;
        let ttl = i64::from(pass_ttl_secs) * 1000;
        streams.spawn(async move {
            let run = stream(
                addr,
                source,
                request,
                seen_i.clone(),
                buy,
                i,
                ttl,
                opened,
                permit,
            );
            let outcome = match tokio::time::timeout(Duration::from_secs(600), run).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(_) => Some("timed out".to_owned()),
            };
            if let Some(why) = outcome {
                seen_i.lock().unwrap_or_else(|p| p.into_inner()).failed = Some(why);
            }
        });
    }
    drop(buy_tx);
    // Every permit back: every stream opened (or failed).
    let _all = connecting.acquire_many(1024).await?;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "{} streams open in {connect_secs:.1} s; the sale starts at {starts_at}",
        opened.load(Ordering::Relaxed)
    );
    // Every stream ends once its buyer was let in or told sold out.
    while streams.join_next().await.is_some() {}
    buyer_task.await.ok();
    if let Some(s) = sampler {
        s.abort();
    }
    let seen: Vec<Seen> = seen
        .iter()
        .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();
    let mut failures: Vec<String> = seen.iter().filter_map(|s| s.failed.clone()).collect();
    let stream_failures = failures.len() as u64;
    failures.sort();
    failures.dedup();
    failures.truncate(5);
    let mut admitted: Vec<(u64, i64)> = seen
        .iter()
        .filter_map(|s| Some((s.place.unwrap_or(0), s.admitted_ms?)))
        .collect();
    admitted.sort_unstable();
    // Order is judged among buyers whose place was seen (one let in before
    // any `waiting` event has none).
    let placed: Vec<_> = admitted.iter().filter(|a| a.0 > 0).collect();
    let out_of_order = placed.windows(2).filter(|w| w[0].1 > w[1].1).count() as u64;
    let unplaced = (admitted.len() - placed.len()) as u64;
    let (first, last) = admitted
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &(_, t)| {
            (lo.min(t), hi.max(t))
        });
    // The room lets buyers in by the tick, a batch at one instant: the
    // rate is what came in after the first instant over the time since
    // (counting the first batch too would overstate it by one batch).
    let after_first = admitted.iter().filter(|&&(_, t)| t > first).count();
    let admission_rate = if after_first > 0 && last > first {
        after_first as f64 * 1000.0 / (last - first) as f64
    } else {
        0.0
    };
    let last_sale = *last_sale.lock().unwrap_or_else(|p| p.into_inner());
    let mut waits: Vec<f64> = seen
        .iter()
        .filter_map(|s| {
            let (told, sold) = (s.sold_out_at?, last_sale?);
            Some(told.saturating_duration_since(sold).as_secs_f64() * 1000.0)
        })
        .collect();
    waits.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if waits.is_empty() {
            0.0
        } else {
            waits[((waits.len() - 1) as f64 * p).round() as usize]
        }
    };
    let never_told = seen
        .iter()
        .filter(|s| s.failed.is_none() && s.sold_out_at.is_none() && s.admitted_ms.is_none())
        .count() as u64;
    let streams_open = opened.load(Ordering::Relaxed);
    let peak = peak_rss.load(Ordering::Relaxed);
    Ok(RoomSummary {
        mode: "room",
        waiters: args.users,
        streams_open,
        stream_failures,
        failures,
        connect_secs,
        stock: args.stock,
        room_rate: args.room_rate,
        admitted: admitted.len() as u64,
        admission_rate,
        admission_rate_ratio: admission_rate / f64::from(args.room_rate.max(1)),
        out_of_order,
        admitted_unplaced: unplaced,
        bought: bought.load(Ordering::Relaxed),
        told_sold_out: waits.len() as u64,
        never_told,
        sold_out_p50_ms: pct(0.5),
        sold_out_p99_ms: pct(0.99),
        sold_out_max_ms: waits.last().copied().unwrap_or(0.0),
        server_peak_rss_mib: args.server_pid.first().map(|_| peak as f64 / 1024.0),
        rss_per_stream_kib: args
            .server_pid
            .first()
            .filter(|_| streams_open > 0)
            .map(|_| peak as f64 / streams_open as f64),
    })
}
