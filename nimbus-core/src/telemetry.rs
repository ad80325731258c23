//! Logging and tracing set-up shared by the binaries: `NIMBUS_LOG_LEVEL`,
//! `NIMBUS_LOG_FORMAT`, and — when `NIMBUS_OTEL_EXPORTER_ENDPOINT` is set — span
//! export over OTLP/HTTP (`NIMBUS_OTEL_EXPORTER_HEADERS`,
//! `NIMBUS_OTEL_SAMPLER_RATIO`).
//!
//! One trace per job (docs/observability.md): the control plane records the W3C
//! `traceparent` of a job's admission with the job, hands the lease's to the
//! agent, and the agent sends its run's to the logging pipeline with the job's
//! lines; [`traceparent_of`] and [`set_parent`] carry the context across.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::Env;
use crate::error::{Error, Result};

/// The exporting provider, flushed by [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// How spans are exported, from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// The OTLP/HTTP traces URL (`…/v1/traces`).
    pub traces_url: String,
    /// Headers sent with every export (`NIMBUS_OTEL_EXPORTER_HEADERS`), e.g. an API key.
    pub headers: HashMap<String, String>,
    /// Share of traces sampled, by trace id.
    pub sampler_ratio: f64,
}

impl OtelConfig {
    /// `None` when NIMBUS_OTEL_EXPORTER_ENDPOINT is unset.
    pub fn from_env(env: &Env) -> Result<Option<OtelConfig>> {
        let Some(endpoint) = env
            .get("NIMBUS_OTEL_EXPORTER_ENDPOINT")
            .filter(|e| !e.is_empty())
        else {
            return Ok(None);
        };
        let bad = |variable: &str, message: String| Error::Config {
            variable: variable.into(),
            message,
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(bad(
                "NIMBUS_OTEL_EXPORTER_ENDPOINT",
                format!("expected an http:// or https:// URL, got {endpoint:?}"),
            ));
        }
        let endpoint = endpoint.trim_end_matches('/');
        let traces_url = if endpoint.ends_with("/v1/traces") {
            endpoint.to_string()
        } else {
            format!("{endpoint}/v1/traces")
        };
        let mut headers = HashMap::new();
        for pair in env
            .get("NIMBUS_OTEL_EXPORTER_HEADERS")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').ok_or_else(|| {
                bad(
                    "NIMBUS_OTEL_EXPORTER_HEADERS",
                    format!("{pair:?} is not name=value"),
                )
            })?;
            headers.insert(name.trim().to_string(), value.trim().to_string());
        }
        let sampler_ratio = match env.get("NIMBUS_OTEL_SAMPLER_RATIO") {
            None => 1.0,
            Some(raw) => raw
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    bad(
                        "NIMBUS_OTEL_SAMPLER_RATIO",
                        format!("expected a number from 0.0 to 1.0, got {raw:?}"),
                    )
                })?,
        };
        Ok(Some(OtelConfig {
            traces_url,
            headers,
            sampler_ratio,
        }))
    }
}

/// The exporting provider for `service`. Built on a thread of its own: the
/// exporter's HTTP client must not be created inside an async runtime.
fn provider(config: OtelConfig, service: &str) -> Result<SdkTracerProvider> {
    let service = service.to_string();
    std::thread::spawn(move || {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.traces_url.clone())
            .with_headers(config.headers.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Config {
                variable: "NIMBUS_OTEL_EXPORTER_ENDPOINT".into(),
                message: format!("the OTLP exporter: {e}"),
            })?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sampler_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build())
    })
    .join()
    .map_err(|_| Error::Internal("building the OTLP exporter panicked".into()))?
}

/// Installs the global tracing subscriber for `service` (once; later calls are
/// no-ops): log lines on stderr, and spans over OTLP when configured.
pub fn init(env: &Env, service: &str) -> Result<()> {
    let level = env.get("NIMBUS_LOG_LEVEL").unwrap_or("info");
    let filter = EnvFilter::try_new(level).map_err(|e| Error::Config {
        variable: "NIMBUS_LOG_LEVEL".into(),
        message: format!("invalid filter {level:?}: {e}"),
    })?;
    // Colour only on a terminal: log files and CI output stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // NIMBUS_LOG_LEVEL filters the log lines only: spans are exported at info
    // whatever the log level, so a quiet log keeps its traces.
    let fmt = match env.get("NIMBUS_LOG_FORMAT").unwrap_or("text") {
        "text" => fmt.with_filter(filter).boxed(),
        "json" => fmt.json().with_filter(filter).boxed(),
        other => {
            return Err(Error::Config {
                variable: "NIMBUS_LOG_FORMAT".into(),
                message: format!("expected text or json, got {other:?}"),
            })
        }
    };
    let mut layers = vec![fmt];
    if let Some(config) = OtelConfig::from_env(env)? {
        let provider = provider(config, service)?;
        let tracer = provider.tracer("nimbus");
        let _ = PROVIDER.set(provider);
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(exported_spans())
                .boxed(),
        );
    }
    // Already initialised (tests, embedders): keep the existing subscriber.
    let _ = Registry::default().with(layers).try_init();
    Ok(())
}

/// What is exported: Nimbus's own spans (and events inside them) at info and
/// above; of other crates (database drivers, HTTP clients) only warnings.
fn exported_spans() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    [
        "nimbus_core",
        "nimbus_vmm",
        "nimbus_logs",
        "nimbus_cache",
        "nimbus_policy",
    ]
    .into_iter()
    .fold(
        tracing_subscriber::filter::Targets::new().with_default(LevelFilter::WARN),
        |targets, crate_name| targets.with_target(crate_name, LevelFilter::INFO),
    )
}

/// Exports the spans still buffered; call once before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        // Blocks until the exporter is done: off any async runtime's threads.
        let provider = provider.clone();
        let _ = std::thread::spawn(move || provider.shutdown()).join();
    }
}

/// The W3C `traceparent` of `span`, if spans are exported and it is recorded.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Makes `span` continue the trace of `traceparent` (a W3C header value); a
/// missing or malformed one leaves it where it is.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// The metrics label of an HTTP method: the methods Nimbus serves by name, any
/// other (clients can send arbitrary extension methods) as `other`, so label
/// values come from a fixed set.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_settings_are_read_and_checked() {
        let none = Env::from_map([("X", "y")]);
        assert_eq!(OtelConfig::from_env(&none).expect("parses"), None);
        let env = Env::from_map([
            ("NIMBUS_OTEL_EXPORTER_ENDPOINT", "http://collector:4318/"),
            ("NIMBUS_OTEL_EXPORTER_HEADERS", "x-api-key=abc, x-team = ci"),
            ("NIMBUS_OTEL_SAMPLER_RATIO", "0.25"),
        ]);
        let config = OtelConfig::from_env(&env).expect("parses").expect("set");
        assert_eq!(config.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(config.headers["x-api-key"], "abc");
        assert_eq!(config.headers["x-team"], "ci");
        assert_eq!(config.sampler_ratio, 0.25);
        for (name, value) in [
            ("NIMBUS_OTEL_EXPORTER_ENDPOINT", "collector:4318"),
            ("NIMBUS_OTEL_EXPORTER_HEADERS", "no-equals"),
            ("NIMBUS_OTEL_SAMPLER_RATIO", "2"),
        ] {
            let mut env = Env::from_map([("NIMBUS_OTEL_EXPORTER_ENDPOINT", "http://c:4318")]);
            env.set(name, value);
            let error = OtelConfig::from_env(&env).expect_err("refused");
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn without_export_there_is_no_trace_context() {
        let span = tracing::info_span!("unexported");
        assert_eq!(traceparent_of(&span), None);
        set_parent(&span, Some("garbage"));
        set_parent(&span, None);
    }
}
