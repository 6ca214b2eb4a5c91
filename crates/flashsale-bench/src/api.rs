//! The service's endpoints as the set-up and verification steps use them:
//! create or read the sale, read its stats until the store caught up, read
//! accepted orders back with their owners' tokens.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::StreamExt as _;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Client, RequestBuilder, StatusCode, Url};
use serde_json::Value;

use crate::checks::{compare_order, Readback, Stats};
use crate::load::{outcome_key, Accepted, Outcome, MAX_SAMPLES};

/// How long [`Api::settled_stats`] waits for the order writer to catch up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client of a load: keep-alive connections for `concurrency`
/// workers, no Nagle delay, HTTP/1.1 only, `timeout` per request.
///
/// # Errors
/// When the TLS-less client cannot be built (it can always be, in practice).
pub fn client(concurrency: usize, timeout: Duration) -> anyhow::Result<Client> {
    Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .http1_only()
        .timeout(timeout)
        .user_agent(concat!("flashsale-bench/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// One server, and the admin token when there is one.
#[derive(Debug, Clone)]
pub struct Api {
    /// The shared, pooled client.
    pub client: Client,
    /// Base URL; paths are appended to it.
    pub base: Url,
    /// `Authorization` value of the admin token.
    pub admin: Option<HeaderValue>,
}

impl Api {
    /// `base` with `segments` appended, each percent-encoded.
    ///
    /// # Errors
    /// When `base` cannot be a base URL (`mailto:…`).
    pub fn url(&self, segments: &[&str]) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("{} cannot be a base URL", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Adds the admin token to `request`.
    ///
    /// # Errors
    /// When there is no admin token.
    pub fn admin(&self, request: RequestBuilder) -> anyhow::Result<RequestBuilder> {
        let token = self
            .admin
            .clone()
            .ok_or_else(|| anyhow!("this needs --admin-token (or FLASHSALE_ADMIN_TOKEN)"))?;
        Ok(request.header(AUTHORIZATION, token))
    }

    /// Sends `request` and returns its JSON body when the status is `want`.
    ///
    /// # Errors
    /// Another status (with the body), no answer, or a body that is not JSON.
    pub async fn expect(&self, request: RequestBuilder, want: StatusCode) -> anyhow::Result<Value> {
        let response = request.send().await.context("sending the request")?;
        let status = response.status();
        let url = response.url().clone();
        let body = response.bytes().await.context("reading the answer")?;
        if status != want {
            let shown = String::from_utf8_lossy(&body);
            bail!("{url} answered {status}: {}", shown.trim());
        }
        serde_json::from_slice(&body).with_context(|| format!("{url} answered with invalid JSON"))
    }

    /// `GET /api/v1/sales/{id}/stats` with the admin token.
    ///
    /// # Errors
    /// No admin token, another answer than `200`, or unexpected stats.
    pub async fn stats(&self, sale_id: &str) -> anyhow::Result<Stats> {
        let url = self.url(&["api", "v1", "sales", sale_id, "stats"])?;
        let body = self
            .expect(self.admin(self.client.get(url))?, StatusCode::OK)
            .await
            .context("reading the sale's stats")?;
        Stats::from_json(&body).map_err(|e| anyhow!("unexpected stats {body}: {e}"))
    }

    /// Polls the sale's stats until the order store holds `orders` more
    /// orders than `before`, or [`SETTLE_TIMEOUT`] passes; returns the last
    /// stats read either way.
    ///
    /// # Errors
    /// As [`Api::stats`], for the last read.
    pub async fn settled_stats(
        &self,
        sale_id: &str,
        orders: u64,
        before: u64,
    ) -> anyhow::Result<Stats> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let stats = self.stats(sale_id).await;
            let settled =
                matches!(&stats, Ok(s) if s.orders_persisted.saturating_sub(before) >= orders);
            if settled || Instant::now() >= deadline {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads up to `sample` of `outcome`'s accepted orders (chosen at random
    /// when fewer than all) back with their owners' tokens, `concurrency` at
    /// a time. An order that answers `404`, `429` or `503` is tried again,
    /// up to `attempts` reads in all (a store that lags, load shedding).
    pub async fn read_back(
        &self,
        sale_id: &str,
        outcome: &Outcome,
        sample: usize,
        concurrency: usize,
        attempts: u32,
    ) -> Readback {
        let accepted = &outcome.accepted;
        let picked: Vec<&Accepted> = if sample >= accepted.len() {
            accepted.iter().collect()
        } else {
            rand::seq::index::sample(&mut rand::rng(), accepted.len(), sample)
                .into_iter()
                .map(|i| &accepted[i])
                .collect()
        };
        let attempts = attempts.max(1);
        // The reads are made before they run, so the stream holds no
        // closure: a caller may run this inside a spawned task, and the
        // compiler cannot prove a stream of borrowing closures `Send`.
        let reads: Vec<_> = picked
            .iter()
            .map(|&order| self.read_one(sale_id, outcome, order, attempts))
            .collect();
        let results: Vec<Result<(), String>> = futures::stream::iter(reads)
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut readback = Readback {
            checked: picked.len(),
            total: accepted.len(),
            failed: 0,
            samples: Vec::new(),
        };
        for problem in results.into_iter().filter_map(Result::err) {
            readback.failed += 1;
            if readback.samples.len() < MAX_SAMPLES {
                readback.samples.push(problem);
            }
        }
        readback
    }

    /// Reads one accepted order back.
    async fn read_one(
        &self,
        sale_id: &str,
        outcome: &Outcome,
        order: &Accepted,
        attempts: u32,
    ) -> Result<(), String> {
        let owner = outcome.owner(order);
        let token = outcome
            .buyers
            .token(order.user)
            .ok_or_else(|| format!("order {}: no token for {owner}", order.order_id))?;
        let url = self
            .url(&["api", "v1", "orders", &order.order_id])
            .map_err(|e| format!("order {}: {e}", order.order_id))?;
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let answer = self
                .client
                .get(url.clone())
                .header(AUTHORIZATION, token.clone())
                .send()
                .await;
            let response = match answer {
                Ok(response) => response,
                Err(e) => {
                    last = format!("order {}: {e}", order.order_id);
                    continue;
                }
            };
            let status = response.status();
            let body = match response.bytes().await {
                Ok(body) => body,
                Err(e) => {
                    last = format!("order {}: {e}", order.order_id);
                    continue;
                }
            };
            if status == StatusCode::OK {
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                return compare_order(&value, order, owner, sale_id)
                    .map_err(|e| format!("order {}: {e}", order.order_id));
            }
            last = format!(
                "order {} of {owner}: {}",
                order.order_id,
                outcome_key(status.as_u16(), &body)
            );
            // Only a lagging store or load shedding is worth another try.
            if !matches!(
                status,
                StatusCode::NOT_FOUND
                    | StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::SERVICE_UNAVAILABLE
            ) {
                break;
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_from_segments() {
        let api = Api {
            client: Client::new(),
            base: Url::parse("http://127.0.0.1:8080").unwrap(),
            admin: None,
        };
        assert_eq!(
            api.url(&["api", "v1", "sales", "a b", "purchase"])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/api/v1/sales/a%20b/purchase"
        );
        let prefixed = Api {
            base: Url::parse("http://localhost:9/shop/").unwrap(),
            ..api
        };
        assert_eq!(
            prefixed.url(&["healthz"]).unwrap().as_str(),
            "http://localhost:9/shop/healthz"
        );
    }
}
