//! An in-process OTLP/gRPC trace collector for the export tests. Each test file is its own
//! process with one test, because it sets `OTEL_*` variables and installs the global
//! subscriber.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a test waits for a span to reach the collector.
pub const DEADLINE: Duration = Duration::from_secs(20);

struct Sink(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        // The receiver goes away only when the test is over.
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A received span with the attributes of the resource that sent it.
#[derive(Clone)]
pub struct Received {
    pub resource: HashMap<String, String>,
    pub span: Span,
}

pub struct Collector {
    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    requests: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    received: Vec<Received>,
    runtime: tokio::runtime::Runtime,
}

impl Collector {
    /// Serves on an ephemeral loopback port from a runtime of its own, so the test thread
    /// can block in `flush()` while the collector answers.
    pub fn start() -> Collector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("collector runtime");
        let (tx, requests) = mpsc::unbounded_channel();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Sink(tx)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Collector {
            endpoint: format!("http://{addr}"),
            requests,
            received: Vec::new(),
            runtime,
        }
    }

    /// Waits until a span named `name` has arrived; panics after [`DEADLINE`].
    pub fn wait_for_span(&mut self, name: &str) -> Received {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(r) = self.received.iter().find(|r| r.span.name == name) {
                return r.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let requests = &mut self.requests;
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(left, requests.recv()).await });
            let request = match next {
                Ok(Some(r)) => r,
                Ok(None) => panic!("the collector stopped"),
                Err(_) => {
                    let seen: Vec<&str> =
                        self.received.iter().map(|r| r.span.name.as_str()).collect();
                    panic!("no span {name:?} within {DEADLINE:?}; got {seen:?}")
                }
            };
            for rs in request.resource_spans {
                let resource = rs
                    .resource
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default();
                for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                    self.received.push(Received {
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
    }
}

/// String forms of the attributes (strings as they are, other values debug-printed).
pub fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}
