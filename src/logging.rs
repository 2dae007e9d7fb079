//! porteiro's own log: text or JSON lines on stderr, colours only when stderr is a terminal
//! (a file or journald would get escape codes), and the per-connection handshake errors
//! pingora logs counted instead of written: a port scan must not fill the disk.

use std::fmt::Debug;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::model::LogFormat;

/// Sets up logging for the process; `RUST_LOG` overrides `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => quiet_client_noise(filter),
        Err(_) => default_filter.into(),
    };
    let ansi = std::io::stderr().is_terminal();
    let base = tracing_subscriber::registry()
        .with(filter)
        .with(QuietHandshakes);
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let done = match format {
        LogFormat::Text => base.with(text).try_init(),
        LogFormat::Json => base
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if let Err(e) = done {
        eprintln!("porteiro: logging was already set up: {e}");
    }
}

/// rustls writes a WARN line for many things a client does wrong (a malformed server name, a
/// renegotiation attempt), each with what the client sent: a client could fill the disk. Kept
/// to errors whatever `RUST_LOG` says, unless it names rustls itself.
fn quiet_client_noise(filter: EnvFilter) -> EnvFilter {
    let set = std::env::var("RUST_LOG").unwrap_or_default();
    match (set.contains("rustls"), "rustls=error".parse()) {
        (false, Ok(directive)) => filter.add_directive(directive),
        _ => filter,
    }
}

/// HTTP/2 handshakes that fail (a preface cut short, garbage after ALPN chose h2): one ERROR
/// line each from pingora, turned into a count in
/// `porteiro_tls_handshake_failures_total{reason="handshake"}` and a debug line. (`conn` runs
/// and counts TLS handshakes itself.)
struct QuietHandshakes;

const NOISY: [(&str, &str); 1] = [("pingora_core::apps", "H2 handshake error")];

impl<S: Subscriber> Layer<S> for QuietHandshakes {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        // pingora logs through `log`: such events carry their target in a `log.target` field.
        let meta = event.metadata();
        if !(meta.target() == "log" && *meta.level() == tracing::Level::ERROR) {
            return true;
        }
        let mut seen = Seen::default();
        event.record(&mut seen);
        let noisy = NOISY
            .iter()
            .any(|(t, m)| seen.target.starts_with(t) && seen.message.starts_with(m));
        if !noisy {
            return true;
        }
        crate::metrics::get().tls_refused("handshake");
        tracing::debug!(target: "porteiro::handshake", "{}", seen.message);
        false
    }
}

#[derive(Default)]
struct Seen {
    target: String,
    message: String,
}

impl Visit for Seen {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.target = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "log.target" => self.target = format!("{value:?}"),
            _ => {}
        }
    }
}
