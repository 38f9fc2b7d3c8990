//! How the text log lines spell fields: as tracing-subscriber's default does (`name=value`,
//! the message bare), without the `otel.*` fields. Those name and classify a span for an
//! OpenTelemetry exporter (`otel.name` repeats the method, `otel.kind` is always `server`); in a
//! line a person reads they only add length. The JSON format keeps them.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// The field formatter of text lines.
#[derive(Debug, Default, Clone, Copy)]
pub struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Fields { writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes each field but the exporter's, space-separated.
struct Fields<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    /// The error and, as the default formatter writes them, its causes
    /// (`error=… error.sources=[…, …]`).
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let sources: Vec<String> =
            std::iter::successors(value.source(), |e| e.source()).map(ToString::to_string).collect();
        if sources.is_empty() {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            let name = field.name();
            self.record_debug(field, &format_args!("{value} {name}.sources=[{}]", sources.join(", ")));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("otel.") {
            return;
        }
        let separator = if std::mem::take(&mut self.first) { "" } else { " " };
        self.result = match name {
            "message" => write!(self.writer, "{separator}{value:?}"),
            _ => write!(self.writer, "{separator}{}={value:?}", name.trim_start_matches("r#")),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// An error with a cause.
    #[derive(Debug)]
    struct Caused(std::io::Error);

    impl fmt::Display for Caused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot connect")
        }
    }

    impl std::error::Error for Caused {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_line_leaves_out_the_exporters_fields_and_keeps_the_rest() {
        let lines = Lines::default();
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_writer(lines.clone()).fmt_fields(TextFields).finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "gateway",
                method = "/postern.tenant.v1.TenantService/GetTenant",
                otel.name = "postern.tenant.v1.TenantService/GetTenant",
                otel.kind = "server",
                principal = tracing::field::Empty,
            );
            let _entered = span.enter();
            span.record("principal", tracing::field::display("admin"));
            let failure = std::io::Error::other("no route");
            tracing::info!(code = 14, error = &failure as &dyn std::error::Error, "call failed");
            let caused = Caused(failure);
            tracing::warn!(error = &caused as &dyn std::error::Error, "with its cause");
        });
        let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
        assert!(!text.contains("otel."), "{text}");
        assert!(
            text.contains(
                "gateway{method=\"/postern.tenant.v1.TenantService/GetTenant\" principal=admin}: \
                 postern::logs::tests: call failed code=14 error=no route"
            ),
            "{text}"
        );
        assert!(text.contains("with its cause error=cannot connect error.sources=[no route]"), "{text}");
    }
}
