//! The agent's HTTP client: reqwest over rustls, trusting the configured CA
//! (the server's development CA) and nothing else when one is given.
//!
//! It knows every server address the courier logged in with (instances of one
//! server on one database) and fails over: a call that gets no answer from one
//! is sent to the next, and the client keeps using the one that answered.
//! Sending a push again elsewhere is safe: confirmations keep their ids, and
//! the server applies an id once.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use handover_shared::{
    api::{ErrorBody, LoginRequest, LoginResponse, PhotoUpload, RefreshRequest},
    sync::{AssignmentChanges, ConfirmationBatch, ConfirmationResults},
    DeliveryId, ErrorCode,
};
use reqwest::{
    blocking,
    header::{CONTENT_RANGE, CONTENT_TYPE},
    StatusCode,
};
use serde::{de::DeserializeOwned, Serialize};

/// Why a call did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer at all: refused, cut, timed out. Worth retrying later.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server answered, but cannot serve now (5xx, 429). Worth retrying later.
    #[error("the server cannot serve now ({status}): {message}")]
    Busy { status: u16, message: String },
    /// 401: the token or session is not (or no longer) good.
    #[error("{message}")]
    Unauthorized { code: String, message: String },
    /// Any other refusal, with the server's code.
    #[error("the server refused ({status} {code}): {message}")]
    Refused { status: u16, code: String, message: String },
}

impl CallError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Unreachable(_) | CallError::Busy { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: blocking::Client,
    bases: Vec<String>,
    /// The server that answered last, tried first.
    current: Arc<AtomicUsize>,
}

impl Client {
    /// A client of `servers`, tried in turn when one does not answer.
    pub fn new(servers: &[String], ca: Option<&Path>, timeout: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(!servers.is_empty(), "no server address to talk to");
        let mut builder = blocking::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .timeout(timeout);
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading the CA certificate {}", ca.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem).context("the CA file is not a PEM certificate")?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(certificate);
        }
        let bases = servers.iter().map(|server| server.trim_end_matches('/').to_owned()).collect();
        Ok(Self { http: builder.build()?, bases, current: Arc::default() })
    }

    /// The server tried first now.
    pub fn server(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Sends the request that `build` makes for a server's base URL, starting
    /// with the current server and going on to the next while none answers.
    fn call<T: DeserializeOwned>(&self, build: impl Fn(&str) -> blocking::RequestBuilder) -> Result<T, CallError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut unreachable = Vec::new();
        for turn in 0..self.bases.len() {
            let index = (first + turn) % self.bases.len();
            match self.send(build(&self.bases[index])) {
                Err(CallError::Unreachable(why)) => unreachable.push(format!("{}: {why}", self.bases[index])),
                answered => {
                    self.current.store(index, Ordering::Relaxed);
                    return answered;
                }
            }
        }
        Err(CallError::Unreachable(unreachable.join("; ")))
    }

    fn send<T: DeserializeOwned>(&self, request: blocking::RequestBuilder) -> Result<T, CallError> {
        let response = request.send().map_err(|err| CallError::Unreachable(err.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return response.json::<T>().map_err(|err| CallError::Unreachable(format!("the answer was cut: {err}")));
        }
        let (code, message) = match response.json::<ErrorBody>() {
            Ok(body) => (body.error.code, body.error.message),
            // Not our error body (a proxy's page, say): no code of its own.
            Err(_) => (ErrorCode::HttpError.as_str().to_owned(), status.to_string()),
        };
        Err(match status {
            StatusCode::UNAUTHORIZED => CallError::Unauthorized { code, message },
            StatusCode::TOO_MANY_REQUESTS => CallError::Busy { status: status.as_u16(), message },
            s if s.is_server_error() => CallError::Busy { status: s.as_u16(), message },
            s => CallError::Refused { status: s.as_u16(), code, message },
        })
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        token: Option<&str>,
    ) -> Result<T, CallError> {
        self.call(|base| {
            let request = self.http.post(format!("{base}{path}")).json(body);
            match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            }
        })
    }

    pub fn login(&self, request: &LoginRequest) -> Result<LoginResponse, CallError> {
        self.post("/api/v1/auth/login", request, None)
    }

    pub fn refresh(&self, refresh_token: &str) -> Result<LoginResponse, CallError> {
        self.post("/api/v1/auth/refresh", &RefreshRequest { refresh_token: refresh_token.to_owned() }, None)
    }

    pub fn pull(&self, token: &str, since: Option<&str>) -> Result<AssignmentChanges, CallError> {
        self.call(|base| {
            let request = self.http.get(format!("{base}/api/v1/sync/assignments")).bearer_auth(token);
            match since {
                Some(cursor) => request.query(&[("since", cursor)]),
                None => request,
            }
        })
    }

    pub fn push(&self, token: &str, batch: &ConfirmationBatch) -> Result<ConfirmationResults, CallError> {
        self.post("/api/v1/sync/confirmations", batch, Some(token))
    }

    /// How far the upload of `digest` for `delivery` has come (`received` 0
    /// when nothing arrived yet).
    pub fn photo_upload(&self, token: &str, delivery: &DeliveryId, digest: &str) -> Result<PhotoUpload, CallError> {
        self.call(|base| self.http.get(photo_url(base, delivery, digest)).bearer_auth(token))
    }

    /// Sends `chunk`, the bytes of the photo from `start` on (of `total` in
    /// all); the server takes it only if `start` is where the upload stands.
    pub fn put_photo_chunk(
        &self,
        token: &str,
        delivery: &DeliveryId,
        digest: &str,
        start: u64,
        chunk: &[u8],
        total: u64,
    ) -> Result<PhotoUpload, CallError> {
        // `Content-Range` names the last byte, inclusive.
        let end = start + (chunk.len() as u64).max(1) - 1;
        let range = format!("bytes {start}-{end}/{total}");
        self.call(|base| {
            self.http
                .put(photo_url(base, delivery, digest))
                .bearer_auth(token)
                .header(CONTENT_RANGE, &range)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(chunk.to_vec())
        })
    }
}

fn photo_url(base: &str, delivery: &DeliveryId, digest: &str) -> String {
    format!("{base}/api/v1/deliveries/{delivery}/photos/{digest}")
}
