//! Structured logs with `tracing`, to stderr. `RUST_LOG` filters them
//! (default `info`); standard output stays free for the `listening on` line.
//! Each request closes with one line carrying its route, status, caller and time.

use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, fmt::format::FmtSpan, EnvFilter};

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,actix_server=warn"));
    // A second call (tests) keeps the first subscriber.
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        // One line per request when its span closes: an access log with timings.
        .with_span_events(FmtSpan::CLOSE)
        .try_init();
}

/// The root span of every request: the default HTTP fields, plus who is calling,
/// filled in by the `Auth` extractor once the token is checked.
#[derive(Debug)]
pub struct RequestSpan;

impl tracing_actix_web::RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        tracing_actix_web::root_span!(request, username = tracing::field::Empty, device_id = tracing::field::Empty)
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        tracing_actix_web::DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}
