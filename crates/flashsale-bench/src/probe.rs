//! A health probe beside a load: `GET <path>` at a steady pace on a fresh
//! connection each time, as a kubelet or a load balancer probes, with its
//! latency recorded. It shows whether a node under a flood still answers
//! the probes that decide whether it stays in service.

use std::time::{Duration, Instant};

use reqwest::{Client, Url};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::report::Latency;

/// What the probe saw.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeReport {
    /// The probed URL.
    pub url: String,
    /// Probes sent.
    pub sent: u64,
    /// Probes answered `2xx`.
    pub ok: u64,
    /// Probes answered otherwise, or not at all (within the timeout).
    pub failed: u64,
    /// Latency of every answered probe (connection set-up included).
    pub latency_ms: Latency,
    /// Probes that took longer than [`SLOW`] (or failed).
    pub slower_than_250ms: u64,
}

/// A probe slower than this counts against the node (a typical probe
/// budget on a 1 s timeout, with room for the network).
pub const SLOW: Duration = Duration::from_millis(250);

/// A running probe; [`Probe::finish`] stops it and reports.
#[derive(Debug)]
pub struct Probe {
    stop: oneshot::Sender<()>,
    task: JoinHandle<ProbeReport>,
}

impl Probe {
    /// Starts probing `url` every `every`, each probe given `timeout`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn start(url: Url, every: Duration, timeout: Duration) -> anyhow::Result<Self> {
        // No idle connections kept: every probe opens its own, so a full
        // accept queue or a connection cap shows in its latency.
        let client = Client::builder()
            .pool_max_idle_per_host(0)
            .http1_only()
            .timeout(timeout)
            .build()?;
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut latency = crate::load::histogram();
            let (mut sent, mut ok, mut failed, mut slow) = (0, 0, 0, 0);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                sent += 1;
                let began = Instant::now();
                let answered = client.get(url.clone()).send().await;
                let took = began.elapsed();
                match answered {
                    Ok(response) if response.status().is_success() => {
                        ok += 1;
                        latency
                            .saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                        slow += u64::from(took > SLOW);
                    }
                    Ok(_) | Err(_) => {
                        failed += 1;
                        slow += 1;
                    }
                }
            }
            ProbeReport {
                url: url.to_string(),
                sent,
                ok,
                failed,
                latency_ms: Latency::from_micros(&latency),
                slower_than_250ms: slow,
            }
        });
        Ok(Self { stop, task })
    }

    /// Stops the probe and reports what it saw.
    ///
    /// # Errors
    /// When the probe's task panicked.
    pub async fn finish(self) -> anyhow::Result<ProbeReport> {
        let _ = self.stop.send(());
        Ok(self.task.await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_of_a_closed_port_counts_every_probe_as_failed() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/healthz", closed.local_addr().unwrap())).unwrap();
        drop(closed);
        let probe =
            Probe::start(url, Duration::from_millis(10), Duration::from_millis(200)).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = probe.finish().await.unwrap();
        assert!(report.sent >= 2, "{report:?}");
        assert_eq!(report.ok, 0);
        assert_eq!(report.failed, report.sent);
        assert_eq!(report.slower_than_250ms, report.sent);
    }
}
