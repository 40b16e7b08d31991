//! Admission: the tower layer in front of every gRPC service. For each call it
//! authenticates the caller, applies the access policy ([`super::access`]), records a refused
//! call in the audit log, hands the [`Caller`] to the handler, and bounds the call by its
//! deadline (`grpc-timeout`, capped by `[server] max_call_seconds`).
//!
//! It runs before the request body is read, so a caller without the right to call a method
//! never gets a message decoded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::Instrument as _;

use super::limits::{Limits, Permit};
use super::refusals::Refusals;
use super::{Authenticator, Caller, Denied};
use crate::audit::NewAuditEvent;

#[derive(Clone)]
pub struct AdmissionLayer {
    auth: Arc<Authenticator>,
    refusals: Refusals,
    limits: Arc<Limits>,
    max_call: Duration,
}

impl AdmissionLayer {
    pub fn new(
        auth: Authenticator,
        refusals: Refusals,
        limits: Arc<Limits>,
        max_call: Duration,
    ) -> Self {
        AdmissionLayer {
            auth: Arc::new(auth),
            refusals,
            limits,
            max_call,
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

type Answer<E> = Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let span = crate::telemetry::grpc_span(&path, request.headers());
        // A metrics label: only methods the policy knows, so callers cannot mint labels.
        let method = match super::access(&path) {
            Some(_) => path.clone(),
            None => "unknown".to_owned(),
        };
        let subject = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().and_then(|c| super::certificate_subject(c)));
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match self
            .layer
            .auth
            .admit(&path, authorization, subject.as_deref())
        {
            Ok(principal) => {
                let deadline = deadline(request.headers())
                    .map_or(self.layer.max_call, |d| d.min(self.layer.max_call));
                let permit = match &principal {
                    Some(p) => match self
                        .layer
                        .limits
                        .admit(&p.name, super::starts_operation(&path))
                    {
                        Ok(permit) => Some(permit),
                        Err(exhausted) => {
                            tracing::debug!(principal = %p.name, method = %path, "call refused: {exhausted}");
                            let answer =
                                Status::resource_exhausted(exhausted.to_string()).into_http();
                            crate::metrics::grpc_call(
                                &method,
                                code_of(answer.headers()),
                                started.elapsed(),
                            );
                            return Box::pin(async move { Ok(answer) });
                        }
                    },
                    None => None,
                };
                if let Some(principal) = principal {
                    request.extensions_mut().insert(Caller {
                        principal,
                        method: path,
                    });
                }
                // The clone that was made ready is the one that must be called.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(
                    async move {
                        let answer = match tokio::time::timeout(deadline, inner.call(request)).await
                        {
                            Ok(answer) => answer
                                .map(size_limit_is_resource_exhausted)
                                .map(|a| hold_until_sent(a, permit)),
                            Err(_) => {
                                Ok(Status::deadline_exceeded("deadline exceeded").into_http())
                            }
                        };
                        if let Ok(a) = &answer {
                            let code = code_of(a.headers());
                            tracing::Span::current().record("rpc.grpc.status_code", code);
                            crate::metrics::grpc_call(&method, code, started.elapsed());
                        }
                        answer
                    }
                    .instrument(span),
                )
            }
            Err(denied) => {
                let refusals = self.layer.refusals.clone();
                // A refusal is a call too: past the principal's limit it is still refused,
                // but only counted in the audit log, not itemised.
                let permit = match &denied {
                    Denied::Forbidden { principal, .. } => {
                        Some(self.layer.limits.admit(&principal.name, false))
                    }
                    Denied::Unauthenticated(_) => None,
                };
                Box::pin(
                    async move {
                    // A flood of refusals must not become a flood of log lines.
                    let log = refusals.log_line();
                    match &denied {
                        Denied::Forbidden { principal, method } => {
                            if let Some(more) = log {
                                tracing::warn!(principal = %principal.name, role = %principal.role, method, refused_since_last_line = more, "call refused: permission denied");
                            }
                            match permit {
                                Some(Ok(_held)) => {
                                    refusals.record(NewAuditEvent::refused(principal, method)).await
                                }
                                _ => refusals.count_unitemised(),
                            }
                        }
                        Denied::Unauthenticated(why) => {
                            if let Some(more) = log {
                                tracing::info!(method = %path, reason = why, refused_since_last_line = more, "call refused: unauthenticated");
                            }
                        }
                    }
                    let answer = Status::from(denied).into_http();
                    crate::metrics::grpc_call(
                        &method,
                        code_of(answer.headers()),
                        started.elapsed(),
                    );
                    Ok(answer)
                }
                    .instrument(span),
                )
            }
        }
    }
}

/// Keeps the call's place (its [`Permit`]) until its answer is sent to the end: for a
/// stream, until the stream ends or the client goes away.
fn hold_until_sent(
    answer: http::Response<tonic::body::Body>,
    permit: Option<Permit>,
) -> http::Response<tonic::body::Body> {
    let Some(permit) = permit else {
        return answer;
    };
    answer.map(|body| {
        use http_body_util::BodyExt as _;
        tonic::body::Body::new(body.map_frame(move |frame| {
            let _held = &permit;
            frame
        }))
    })
}

/// The status code name of an answer: from its headers when the call ended there (errors,
/// trailers-only); otherwise OK as far as admission can see (a status in trailers, after
/// the body, is not waited for).
fn code_of(headers: &http::HeaderMap) -> &'static str {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from);
    crate::api::audit::code_name(code)
}

/// tonic answers a request over `max_decoding_message_size` with OUT_OF_RANGE; the gRPC
/// status code table says RESOURCE_EXHAUSTED ("request size over limit"), which is also
/// what clients retry on differently. The refusal is a trailers-only answer, so its status
/// is in the headers.
fn size_limit_is_resource_exhausted(
    mut answer: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    // As sent: grpc-message is percent-encoded.
    const TOO_LARGE: &[u8] = b"Error,%20decoded%20message%20length%20too%20large";
    let h = answer.headers();
    let over_limit = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .is_some_and(|m| m.as_bytes().starts_with(TOO_LARGE));
    if over_limit {
        answer.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from_static("8"), // RESOURCE_EXHAUSTED
        );
    }
    answer
}

/// The caller's deadline from `grpc-timeout` (up to 8 digits and a unit, per the gRPC HTTP/2
/// protocol). A malformed value is ignored, as other gRPC servers do; the cap still applies.
fn deadline(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header() {
        let at = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            deadline(&h)
        };
        assert_eq!(at("250m"), Some(Duration::from_millis(250)));
        assert_eq!(at("2S"), Some(Duration::from_secs(2)));
        assert_eq!(at("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(at("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789S", "12x", "-1S", "1.5S"] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
