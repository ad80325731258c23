//! One trace per job across the processes: the control plane, host agent and
//! logging pipeline binaries export their spans over OTLP/HTTP to a receiver in
//! this test (decoded with opentelemetry-proto), and a job's spans — admission,
//! lease, run, VM boot, steps, log ingest — form one trace with the right parents.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use nimbus_e2e::{
    final_job, mint_token, ControlPlaneProcess, HostAgentProcess, LoggingPipelineProcess,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;

/// One received span: its service, name, ids (hex) and parent's id.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
}

type Spans = Arc<Mutex<Vec<Received>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn receive(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return "undecodable";
    };
    let mut received = spans.lock().expect("spans");
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_id: hex(&span.parent_span_id),
                });
            }
        }
    }
    ""
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_spans_form_one_trace_across_the_services() {
    let Some(assets) = nimbus_core::testsuite::setting("NIMBUS_TEST_ASSETS") else {
        return;
    };
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let receiver = format!("http://{}", listener.local_addr().expect("address"));
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let otel = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("NIMBUS_OTEL_EXPORTER_ENDPOINT", receiver.clone()),
            ("NIMBUS_OTEL_EXPORTER_HEADERS", "x-test=nimbus".to_string()),
            // Export within a fraction of a second (the SDK's batch delay).
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ];
        env.extend_from_slice(extra);
        env
    };
    let pipeline = LoggingPipelineProcess::start(&otel(&[]))
        .await
        .expect("pipeline");
    let control_plane = ControlPlaneProcess::start(&otel(&[]))
        .await
        .expect("control plane");
    let agent_token = mint_token(&["--role", "agent", "--sub", "host-trace"]).expect("agent token");
    let _agent = HostAgentProcess::start(&otel(&[
        ("NIMBUS_CONTROL_PLANE_URL", control_plane.url.clone()),
        (
            "NIMBUS_CONTROL_PLANE_TOKEN",
            agent_token.expose().to_string(),
        ),
        ("NIMBUS_LOGS_URL", pipeline.url.clone()),
        ("NIMBUS_AGENT_ID", "host-trace".to_string()),
        ("NIMBUS_VMM", "sandbox".to_string()),
        ("NIMBUS_ASSETS_DIR", assets),
        ("NIMBUS_VM_NETWORK", "none".to_string()),
        ("NIMBUS_AGENT_MAX_VMS", "1".to_string()),
        ("NIMBUS_LOG_LEVEL", "info".to_string()),
    ]))
    .expect("agent");

    let client = reqwest::Client::new();
    let admin = mint_token(&["--role", "admin"]).expect("admin");
    let org = mint_token(&["--role", "org", "--org-id", "7"]).expect("org");
    let answer = client
        .post(format!("{}/api/orgs", control_plane.url))
        .bearer_auth(admin.expose())
        .json(&json!({"id": 7, "name": "acme"}))
        .send()
        .await
        .expect("org");
    assert!(answer.status().is_success());
    let job: serde_json::Value = client
        .post(format!("{}/api/jobs", control_plane.url))
        .bearer_auth(org.expose())
        .json(&json!({"repo": "acme/app", "steps": [
            {"name": "hello", "run": "echo hello"},
            {"name": "bye", "run": "echo bye"}
        ]}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("job");
    let id = job["id"].as_i64().expect("id");
    let traceparent = job["traceparent"]
        .as_str()
        .expect("the job carries its trace context");
    let trace_id = traceparent.split('-').nth(1).expect("trace id").to_string();
    let done = final_job(
        &control_plane.url,
        org.expose(),
        id,
        Duration::from_secs(60),
    )
    .await
    .expect("job");
    assert_eq!(done["status"], "succeeded", "{done}");

    // Every span of the job's trace, once the services have exported them.
    let expected = [
        "http.request",
        "job.admit",
        "job.lease",
        "job.run",
        "vm.boot",
        "job.step",
        "logs.ingest",
    ];
    let started = Instant::now();
    let trace = loop {
        let trace: Vec<Received> = spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
        let steps = names.iter().filter(|n| **n == "job.step").count();
        if expected.iter().all(|e| names.contains(e)) && steps == 2 {
            break trace;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the trace is incomplete after 30 s: {trace:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_name: HashMap<&str, &Received> = trace.iter().map(|s| (s.name.as_str(), s)).collect();
    let parent_of = |name: &str| {
        let child = by_name[name];
        trace
            .iter()
            .find(|s| s.span_id == child.parent_id)
            .map(|p| p.name.as_str())
            .unwrap_or("(root)")
    };
    assert_eq!(parent_of("http.request"), "(root)");
    assert_eq!(parent_of("job.admit"), "http.request");
    assert_eq!(parent_of("job.lease"), "job.admit");
    assert_eq!(parent_of("job.run"), "job.lease");
    assert_eq!(parent_of("vm.boot"), "job.run");
    let run = by_name["job.run"];
    for step in trace.iter().filter(|s| s.name == "job.step") {
        assert_eq!(step.parent_id, run.span_id, "a step of the run");
    }
    let ingests: Vec<&Received> = trace.iter().filter(|s| s.name == "logs.ingest").collect();
    assert!(
        ingests.iter().all(|s| s.parent_id == run.span_id),
        "the lines of the run: {ingests:#?}"
    );
    let services = |name: &str| by_name[name].service.clone();
    assert_eq!(services("job.admit"), "nimbus-control-plane");
    assert_eq!(services("job.run"), "nimbus-host-agent");
    assert_eq!(services("logs.ingest"), "nimbus-logging-pipeline");
}
