//! Structured logs with `tracing`, to stderr. `RUST_LOG` filters them
//! (default `info`); standard output stays free for the `listening on` line.
//! Each request closes with one line carrying its route, status, caller and time.
//!
//! Every log line is one event: control characters inside it (a newline or an
//! ANSI escape in a username, a header, a message) are written escaped, so
//! that nothing a client sends can start a line of its own or repaint the
//! operator's terminal. Hence no colours either.

use std::io::{self, Write};

use tracing_subscriber::{fmt, fmt::format::FmtSpan, EnvFilter};

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,actix_server=warn"));
    // A second call (tests) keeps the first subscriber.
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(|| EscapingWriter(io::stderr()))
        .with_ansi(false)
        .with_target(false)
        // One line per request when its span closes: an access log with timings.
        .with_span_events(FmtSpan::CLOSE)
        .try_init();
}

/// Writes each formatted event with its control characters escaped, but for
/// the newline that ends it. The fmt layer writes an event in one piece.
struct EscapingWriter<W>(W);

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, event: &[u8]) -> io::Result<usize> {
        self.0.write_all(&escape_event(event))?;
        Ok(event.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `event` with every control character but a final newline written as
/// `\n`, `\r`, `\t` or `\u{..}`.
fn escape_event(event: &[u8]) -> Vec<u8> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let text = String::from_utf8_lossy(body);
    let mut escaped = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if c.is_control() || reorders_text(c) => escaped.push_str(&c.escape_unicode().to_string()),
            c => escaped.push(c),
        }
    }
    let mut bytes = escaped.into_bytes();
    bytes.extend_from_slice(end);
    bytes
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

/// Marks that change the direction of the text around them: written out
/// raw, they can make a line read otherwise than it was logged.
fn reorders_text(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_inside_an_event_can_start_a_line_or_paint_the_terminal() {
        let forged =
            "INFO login username=cust3\n2026-01-01T00:00:00Z INFO login as admin\r\u{1b}[2J\tend\u{202e}nimda\n";
        let written = String::from_utf8(escape_event(forged.as_bytes())).expect("text");
        assert_eq!(written.lines().count(), 1, "{written}");
        assert!(written.ends_with('\n') && !written[..written.len() - 1].chars().any(char::is_control), "{written:?}");
        assert!(written.contains("cust3\\n2026") && written.contains("\\u{1b}[2J\\tend\\u{202e}nimda"), "{written}");
    }

    #[test]
    fn a_plain_event_is_written_as_it_is() {
        let plain = "INFO request done status=200 user=exp1 é\n";
        assert_eq!(escape_event(plain.as_bytes()), plain.as_bytes());
    }
}
