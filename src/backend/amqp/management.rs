//! RabbitMQ's management HTTP API, for the one count AMQP does not give:
//! deliveries handed to consumers and not yet acknowledged.
//!
//! `GET /api/queues/{vhost}/{queue}?columns=…` answers the queue's
//! `messages_ready` and `messages_unacknowledged` as the broker last
//! *sampled* them — every `collect_statistics_interval` (5 s by default;
//! a quorum queue reports on its own tick, also 5 s) — not live. A re-seed
//! must know that a count was taken after a given instant, so each answer
//! is stamped with a lower bound on when it was taken: the broker rewrites
//! the sample's `reductions` (the queue process's work counter) every time
//! it samples, so an answer whose `reductions` differs from the previous
//! answer's was sampled after that previous request was made. Without such
//! a change (the first answer, or a broker that stopped reporting the
//! field) the bound is the request's time less [`MAX_SAMPLE_AGE`], which
//! assumes the broker samples at least that often.
//!
//! Plain `http://` through the server's own hyper client
//! ([`crate::outbound`]): the API is expected on the broker's host or a
//! local proxy, and the server binary carries no second HTTP stack.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, Uri};
use base64::Engine as _;

use super::ManagementApi;
use crate::backend::queue::DepthSample;
use crate::outbound::HttpClient;

/// The management plugin's default port.
pub const DEFAULT_PORT: u16 = 15672;
/// Bound on one API call (connect, request, answer): half the queue
/// breaker's slow-call bound, so that a slow or unreachable API never makes
/// a depth read count against the order queue's circuit breaker (which
/// would refuse purchases); such a read just reports unacked as unknown.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// Oldest a sample may be when nothing shows it is newer: twice the
/// broker's default statistics interval.
pub const MAX_SAMPLE_AGE: Duration = Duration::from_secs(10);
/// How long the API may fail before a re-seed stops waiting for it and
/// falls back to the database standing still: a loaded broker answering
/// late now and then is waited for, one without the plugin is not.
pub const FALLBACK_AFTER: Duration = Duration::from_secs(30);
/// Largest answer read (the `columns` filter keeps it to a few dozen bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// The queue's entry in the management API.
pub struct Api {
    client: HttpClient,
    /// `http://host:port[/prefix]/api/queues/{vhost}/{queue}?columns=…`.
    uri: Uri,
    /// `Basic …`.
    authorization: String,
    track: Mutex<Track>,
    /// Since when every call failed (`None` while the last one answered;
    /// warned once per outage).
    failing_since: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Track {
    /// `reductions` of the last answer, and when that request was sent.
    last: Option<(Option<i64>, Instant)>,
    /// The lower bound of the last answer's sample time.
    taken_after: Option<Instant>,
}

/// What an answer says, before stamping.
#[derive(Debug, PartialEq, Eq)]
struct Reading {
    ready: u32,
    unacked: u32,
    reductions: Option<i64>,
}

impl Api {
    /// The API of `amqp_url`'s broker as `setting` names it, for `queue`;
    /// `None` when it is off.
    ///
    /// # Errors
    /// A message (without credentials) when a URL does not parse or is
    /// not `http://`.
    pub fn new(
        amqp_url: &str,
        setting: &ManagementApi,
        queue: &str,
    ) -> Result<Option<Self>, String> {
        let amqp = url::Url::parse(amqp_url).map_err(|e| format!("the AMQP URL: {e}"))?;
        let mut base = match setting {
            ManagementApi::Off => return Ok(None),
            ManagementApi::Derived => {
                let host = amqp.host_str().unwrap_or("127.0.0.1");
                url::Url::parse(&format!("http://{host}:{DEFAULT_PORT}/"))
                    .map_err(|e| format!("deriving the management URL: {e}"))?
            }
            ManagementApi::At(raw) => {
                let u = url::Url::parse(raw)
                    .map_err(|e| format!("the management URL does not parse: {e}"))?;
                if u.scheme() != "http" {
                    return Err("the management URL must be http:// (a local proxy for TLS)".into());
                }
                u
            }
        };
        // Credentials: the management URL's own, else the AMQP URL's, else
        // RabbitMQ's default user (as lapin assumes for AMQP).
        let (user, pass) = if base.username().is_empty() {
            (
                amqp.username().to_owned(),
                amqp.password().map(str::to_owned),
            )
        } else {
            (
                base.username().to_owned(),
                base.password().map(str::to_owned),
            )
        };
        let user = if user.is_empty() {
            "guest".to_owned()
        } else {
            decode(&user)
        };
        let pass = pass.map_or_else(|| "guest".to_owned(), |p| decode(&p));
        let _ = base.set_username("");
        let _ = base.set_password(None);
        // The AMQP URL's path is the vhost ("/" when absent or empty).
        let vhost = match amqp.path().strip_prefix('/') {
            None | Some("") => "/".to_owned(),
            Some(v) => decode(v),
        };
        {
            let mut segments = base
                .path_segments_mut()
                .map_err(|()| "the management URL cannot take a path".to_owned())?;
            segments
                .pop_if_empty()
                .extend(["api", "queues", vhost.as_str(), queue]);
        }
        base.set_query(Some(
            "columns=messages_ready,messages_unacknowledged,reductions",
        ));
        let uri: Uri = base
            .as_str()
            .parse()
            .map_err(|e| format!("the management URL: {e}"))?;
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        Ok(Some(Self {
            client: crate::outbound::client(TIMEOUT),
            uri,
            authorization,
            track: Mutex::default(),
            failing_since: Mutex::default(),
        }))
    }

    /// The queue's latest sample, stamped; `None` when the API does not
    /// answer in time, refuses, or has not sampled the queue yet.
    pub async fn sample(&self) -> Option<DepthSample> {
        let sent = Instant::now();
        match tokio::time::timeout(TIMEOUT, self.read()).await {
            Ok(Ok(reading)) => {
                if self.failing_since().take().is_some() {
                    tracing::info!("the RabbitMQ management API answers again");
                }
                Some(self.stamp(reading, sent))
            }
            Ok(Err(e)) => {
                self.failed(&e);
                None
            }
            Err(_) => {
                self.failed("no answer within 500 ms");
                None
            }
        }
    }

    fn failing_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.failing_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while the API has failed for less than [`FALLBACK_AFTER`]
    /// (or not at all): a reading without a sample is then worth waiting
    /// for rather than falling back.
    pub fn worth_waiting_for(&self) -> bool {
        self.failing_since()
            .is_none_or(|since| since.elapsed() < FALLBACK_AFTER)
    }

    fn failed(&self, why: &str) {
        let first = {
            let mut since = self.failing_since();
            let first = since.is_none();
            since.get_or_insert_with(Instant::now);
            first
        };
        if first {
            tracing::warn!(
                error = why,
                "cannot read unacknowledged deliveries from the RabbitMQ management API; \
                 re-seeds wait for it, then fall back to the database standing still"
            );
        } else {
            tracing::debug!(error = why, "the RabbitMQ management API still fails");
        }
    }

    async fn read(&self) -> Result<Reading, String> {
        let request = Request::get(self.uri.clone())
            .header(header::AUTHORIZATION, &self.authorization)
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let answer = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("management API: {e}"))?;
        let status = answer.status();
        let body = axum::body::to_bytes(Body::new(answer.into_body()), MAX_ANSWER)
            .await
            .map_err(|e| format!("management API answer: {e}"))?;
        if !status.is_success() {
            return Err(format!("management API answered {status}"));
        }
        parse(&body)
    }

    /// The sample with its lower bound on when it was taken (see the
    /// module docs), given that its request was sent at `sent`.
    fn stamp(&self, reading: Reading, sent: Instant) -> DepthSample {
        let mut track = self.track.lock().unwrap_or_else(|e| e.into_inner());
        let floor = sent.checked_sub(MAX_SAMPLE_AGE).unwrap_or(sent);
        let taken_after = match (track.last, track.taken_after) {
            // A new sample: taken after the request that still saw the old one.
            (Some((before, asked)), _)
                if reading.reductions.is_some() && before != reading.reductions =>
            {
                asked
            }
            // The same sample as last time.
            (Some(_), Some(known)) => known,
            _ => floor,
        }
        .max(floor);
        track.last = Some((reading.reductions, sent));
        track.taken_after = Some(taken_after);
        DepthSample {
            ready: reading.ready,
            unacked: reading.unacked,
            taken_after,
        }
    }
}

/// Reads the API's answer; an answer without counts (a queue the broker
/// has not sampled yet) is an error.
fn parse(body: &[u8]) -> Result<Reading, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        messages_ready: Option<u32>,
        messages_unacknowledged: Option<u32>,
        reductions: Option<i64>,
    }
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| format!("management API answer: {e}"))?;
    match (a.messages_ready, a.messages_unacknowledged) {
        (Some(ready), Some(unacked)) => Ok(Reading {
            ready,
            unacked,
            reductions: a.reductions,
        }),
        _ => Err("the broker has not sampled the queue yet".into()),
    }
}

/// Percent-decodes a URL component (user, password, vhost).
fn decode(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(amqp: &str, setting: ManagementApi) -> Api {
        Api::new(amqp, &setting, "fs.orders").unwrap().unwrap()
    }

    fn credentials(api: &Api) -> String {
        let encoded = api.authorization.strip_prefix("Basic ").unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_derived_url_takes_host_credentials_and_vhost_from_the_amqp_url() {
        let a = api(
            "amqp://app:s%40cret@mq.internal:5672/%2f",
            ManagementApi::Derived,
        );
        assert_eq!(
            a.uri.to_string(),
            "http://mq.internal:15672/api/queues/%2F/fs.orders?columns=messages_ready,messages_unacknowledged,reductions"
        );
        assert_eq!(credentials(&a), "app:s@cret");
        let b = api("amqp://mq/shop", ManagementApi::Derived);
        assert!(
            b.uri.path().ends_with("/api/queues/shop/fs.orders"),
            "{}",
            b.uri
        );
        assert_eq!(credentials(&b), "guest:guest");
        let c = api("amqp://mq", ManagementApi::Derived);
        assert!(
            c.uri.path().ends_with("/api/queues/%2F/fs.orders"),
            "{}",
            c.uri
        );
    }

    #[test]
    fn an_explicit_url_keeps_its_path_and_its_own_credentials() {
        let a = api(
            "amqp://app:pw@mq/%2f",
            ManagementApi::At("http://ops:key@proxy:8080/rabbit/".into()),
        );
        assert_eq!(
            a.uri.path(),
            "/rabbit/api/queues/%2F/fs.orders",
            "{}",
            a.uri
        );
        assert_eq!(a.uri.authority().unwrap().as_str(), "proxy:8080");
        assert_eq!(credentials(&a), "ops:key");
        let b = api(
            "amqp://app:pw@mq/%2f",
            ManagementApi::At("http://proxy:8080".into()),
        );
        assert_eq!(credentials(&b), "app:pw");
    }

    #[test]
    fn an_api_call_never_makes_a_depth_read_slow_for_the_queue_breaker() {
        let breaker = crate::backend::breaker::BreakerSettings::default();
        assert!(TIMEOUT * 2 <= breaker.slow_call);
    }

    #[test]
    fn a_failing_api_is_waited_for_a_while_then_given_up_on() {
        let a = api("amqp://mq", ManagementApi::Derived);
        assert!(a.worth_waiting_for());
        a.failed("test");
        assert!(a.worth_waiting_for(), "just started failing");
        *a.failing_since() = Instant::now().checked_sub(FALLBACK_AFTER);
        assert!(!a.worth_waiting_for(), "failing for FALLBACK_AFTER");
        // An answer ends the outage (`sample` clears it).
        a.failing_since().take();
        assert!(a.worth_waiting_for());
    }

    #[test]
    fn off_https_and_garbage() {
        assert!(Api::new("amqp://mq", &ManagementApi::Off, "q")
            .unwrap()
            .is_none());
        let https = Api::new(
            "amqp://mq",
            &ManagementApi::At("https://mq:15671".into()),
            "q",
        );
        assert!(https.is_err());
        let garbage = Api::new("amqp://mq", &ManagementApi::At("::".into()), "q");
        assert!(garbage.is_err());
        assert_eq!(ManagementApi::parse(""), ManagementApi::Derived);
        assert_eq!(ManagementApi::parse("off"), ManagementApi::Off);
    }

    #[test]
    fn debug_never_shows_credentials() {
        let shown = format!(
            "{:?}",
            super::super::AmqpSettings {
                management: ManagementApi::At("http://ops:hunter2@proxy:8080".into()),
                ..super::super::AmqpSettings::new("amqp://app:hunter3@mq/%2f", "fs")
            }
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
    }

    #[test]
    fn answers_parse_and_an_unsampled_queue_is_unknown() {
        assert_eq!(
            parse(br#"{"messages_ready":3,"messages_unacknowledged":7,"reductions":99}"#),
            Ok(Reading {
                ready: 3,
                unacked: 7,
                reductions: Some(99)
            })
        );
        assert!(parse(br#"{"name":"fs.orders"}"#).is_err());
        assert!(parse(b"<html>").is_err());
    }

    #[test]
    fn a_sample_is_newer_than_the_request_that_saw_the_previous_one() {
        let a = api("amqp://mq", ManagementApi::Derived);
        let reading = |reductions| Reading {
            ready: 0,
            unacked: 0,
            reductions,
        };
        let t0 = Instant::now() + Duration::from_secs(60);
        // First answer: only the age bound.
        assert_eq!(
            a.stamp(reading(Some(1)), t0).taken_after,
            t0 - MAX_SAMPLE_AGE
        );
        // The same sample asked again later: no newer than the age bound.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            a.stamp(reading(Some(1)), t1).taken_after,
            t1 - MAX_SAMPLE_AGE
        );
        // A new sample: taken after the last request that saw the old one.
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(a.stamp(reading(Some(2)), t2).taken_after, t1);
        // No marker at all: the age bound alone.
        let t3 = t2 + Duration::from_secs(30);
        assert_eq!(a.stamp(reading(None), t3).taken_after, t3 - MAX_SAMPLE_AGE);
    }
}
