//! The HTTP side of admission: POST of an AdmissionReview on the webhook path, anything else
//! a clear 4xx. Bodies are bounded in size and time; the CPU-bound answer is bounded in
//! concurrency.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use contract::manifest::ManifestKey;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::{
    metrics::Metrics,
    mutate::ProxySettings,
    review::{self, Exclusions},
};

/// Everything a request needs.
pub struct App {
    pub path: String,
    pub settings: ProxySettings,
    pub key: ManifestKey,
    pub exclusions: Exclusions,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub cpu_slots: Semaphore,
}

/// Answers one HTTP request.
pub async fn handle<B>(
    app: Arc<App>,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if request.uri().path() != app.path {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "not found: admission reviews go to the webhook path",
        ));
    }
    if request.method() != Method::POST {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "admission reviews are POSTed",
        ));
    }
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Ok(reject(
            &app,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        ));
    }
    let too_large = || {
        let message = format!("the request body is over {} bytes", app.max_body_bytes);
        reject(&app, StatusCode::PAYLOAD_TOO_LARGE, &message)
    };
    // A Content-Length over the limit is refused before waiting for a body it cannot have.
    let announced = hyper::body::Body::size_hint(request.body()).lower();
    if announced > u64::try_from(app.max_body_bytes).unwrap_or(u64::MAX) {
        return Ok(too_large());
    }
    let body = Limited::new(request.into_body(), app.max_body_bytes);
    let body = match tokio::time::timeout(app.body_timeout, body.collect()).await {
        Err(_) => {
            return Ok(reject(
                &app,
                StatusCode::REQUEST_TIMEOUT,
                "the request body took too long to arrive",
            ));
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Ok(too_large());
        }
        Ok(Err(e)) => {
            return Ok(reject(
                &app,
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let span = tracing::info_span!(
        "admission",
        uid = tracing::field::Empty,
        namespace = tracing::field::Empty,
        name = tracing::field::Empty,
        outcome = tracing::field::Empty
    );
    async move {
        let Ok(_slot) = app.cpu_slots.acquire().await else {
            return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
        };
        let started = Instant::now();
        let answer = review::answer(&body, &app.settings, &app.key, &app.exclusions);
        let span = tracing::Span::current();
        match answer {
            Ok((json, outcome, details)) => {
                span.record("uid", details.uid.as_str());
                span.record("namespace", details.namespace.as_str());
                span.record("name", details.name.as_str());
                span.record("outcome", outcome.label());
                app.metrics
                    .record(outcome.label(), started.elapsed().as_secs_f64());
                tracing::info!(?outcome, "answered");
                Ok(Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(json)))
                    .unwrap_or_default())
            }
            Err(e) => Ok(reject(&app, StatusCode::BAD_REQUEST, &e.to_string())),
        }
    }
    .instrument(span)
    .await
}

fn reject(app: &App, status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    tracing::warn!(status = status.as_u16(), "rejected a request: {message}");
    app.metrics.reject(match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "wrong_media_type",
        _ => "bad_request",
    });
    plain(status, message)
}

fn plain(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
