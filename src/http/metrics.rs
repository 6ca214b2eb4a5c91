//! HTTP metrics of the API routes: requests in flight, answers by status
//! class, and the requests load shedding and the request timeout turned
//! away.
//!
//! The layer sits outside load shedding (see `app::with_layers`), so a shed
//! or timed-out request counts as the `503` it is answered with. It does
//! not see the ops routes (probes and scrapes would drown the signal) nor
//! the fast lane's memory-only rejections, which
//! `flashsale_purchase_total` counts. Every handle is registered once, so a
//! request costs a few atomic adds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::BoxError;
use metrics::{Counter, Gauge};
use tower::{Layer, Service};

/// Pre-registered handles of the HTTP metrics.
#[derive(Debug)]
pub struct HttpMetrics {
    in_flight: Gauge,
    /// By status class: index 0 is `1xx`, 4 is `5xx`.
    responses: [Counter; 5],
    shed: Counter,
    timeouts: Counter,
}

impl HttpMetrics {
    /// Registers the handles with the installed recorder (install it first:
    /// handles taken before that stay silent). Every series exists from the
    /// start at zero, so `rate()` and the alerts see the first event.
    pub fn new() -> Arc<Self> {
        let class =
            |c: &'static str| metrics::counter!("flashsale_http_responses_total", "class" => c);
        let metrics = Self {
            in_flight: metrics::gauge!("flashsale_http_requests_in_flight"),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(class),
            shed: metrics::counter!("flashsale_http_requests_shed_total"),
            timeouts: metrics::counter!("flashsale_http_request_timeouts_total"),
        };
        for c in metrics
            .responses
            .iter()
            .chain([&metrics.shed, &metrics.timeouts])
        {
            c.increment(0);
        }
        metrics.in_flight.increment(0.0);
        Arc::new(metrics)
    }

    /// The layer that counts requests in flight and answers.
    pub fn layer(self: &Arc<Self>) -> HttpMetricsLayer {
        HttpMetricsLayer(self.clone())
    }

    /// Counts a request the middleware turned away with `err`: shed by the
    /// concurrency limit, or out of time.
    pub fn count_refusal(&self, err: &BoxError) {
        if err.is::<tower::load_shed::error::Overloaded>() {
            self.shed.increment(1);
        } else if err.is::<tower::timeout::error::Elapsed>() {
            self.timeouts.increment(1);
        }
    }

    fn record(&self, status: axum::http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].increment(1);
    }
}

/// See [`HttpMetrics::layer`].
#[derive(Clone, Debug)]
pub struct HttpMetricsLayer(Arc<HttpMetrics>);

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`HttpMetricsLayer`] wraps around the API routes.
#[derive(Clone, Debug)]
pub struct HttpMetricsService<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S, B, ResB> Service<axum::http::Request<B>> for HttpMetricsService<S>
where
    S: Service<axum::http::Request<B>, Response = axum::http::Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        self.metrics.in_flight.increment(1.0);
        Counted {
            inner: self.inner.call(req),
            guard: InFlight(self.metrics.clone()),
        }
    }
}

/// Decrements the in-flight gauge when the request's future is dropped:
/// answered, or abandoned because the client went away.
#[derive(Debug)]
struct InFlight(Arc<HttpMetrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.decrement(1.0);
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, counted on completion.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        guard: InFlight,
    }
}

impl<F, ResB, E> Future for Counted<F>
where
    F: Future<Output = Result<axum::http::Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &out {
            this.guard.0.record(response.status());
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Request, Response, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn answers_are_counted_by_class_and_in_flight_returns_to_zero() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Handles keep the recorder they were registered with.
        let m = metrics::with_local_recorder(&recorder, HttpMetrics::new);
        let svc = m
            .layer()
            .layer(tower::service_fn(|req: Request<()>| async move {
                let status = if req.uri().path() == "/boom" {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                };
                Ok::<_, std::convert::Infallible>(
                    Response::builder().status(status).body(()).unwrap(),
                )
            }));
        for path in ["/ok", "/ok", "/boom"] {
            let req = Request::builder().uri(path).body(()).unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        // A request abandoned before its answer leaves the gauge too.
        let never = m.layer().layer(tower::service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<()>, std::convert::Infallible>>()
        }));
        let pending = never.clone().oneshot(Request::new(()));
        drop(tokio::time::timeout(std::time::Duration::from_millis(10), pending).await);
        m.count_refusal(&BoxError::from(tower::load_shed::error::Overloaded::new()));
        let text = handle.render();
        assert!(
            text.contains(r#"flashsale_http_responses_total{class="2xx"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"flashsale_http_responses_total{class="5xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"flashsale_http_responses_total{class="4xx"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("flashsale_http_requests_in_flight 0"),
            "{text}"
        );
        assert!(
            text.contains("flashsale_http_requests_shed_total 1"),
            "{text}"
        );
        assert!(
            text.contains("flashsale_http_request_timeouts_total 0"),
            "{text}"
        );
    }
}
