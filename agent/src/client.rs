//! The agent's HTTP client: reqwest over rustls, trusting the configured CA
//! (the server's development CA) and nothing else when one is given.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use handover_shared::{
    api::{ErrorBody, LoginRequest, LoginResponse, RefreshRequest},
    sync::{AssignmentChanges, ConfirmationBatch, ConfirmationResults},
    ErrorCode,
};
use reqwest::{blocking, StatusCode};
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
    base: String,
}

impl Client {
    pub fn new(server: &str, ca: Option<&Path>, timeout: Duration) -> anyhow::Result<Self> {
        let mut builder = blocking::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .timeout(timeout);
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading the CA certificate {}", ca.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem).context("the CA file is not a PEM certificate")?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(certificate);
        }
        Ok(Self { http: builder.build()?, base: server.trim_end_matches('/').to_owned() })
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
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request)
    }

    pub fn login(&self, request: &LoginRequest) -> Result<LoginResponse, CallError> {
        self.post("/api/v1/auth/login", request, None)
    }

    pub fn refresh(&self, refresh_token: &str) -> Result<LoginResponse, CallError> {
        self.post("/api/v1/auth/refresh", &RefreshRequest { refresh_token: refresh_token.to_owned() }, None)
    }

    pub fn pull(&self, token: &str, since: Option<&str>) -> Result<AssignmentChanges, CallError> {
        let mut request = self.http.get(format!("{}/api/v1/sync/assignments", self.base)).bearer_auth(token);
        if let Some(cursor) = since {
            request = request.query(&[("since", cursor)]);
        }
        self.send(request)
    }

    pub fn push(&self, token: &str, batch: &ConfirmationBatch) -> Result<ConfirmationResults, CallError> {
        self.post("/api/v1/sync/confirmations", batch, Some(token))
    }
}
