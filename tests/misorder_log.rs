//! A misordered stack is logged once (at error level, naming both layers), not once per
//! request. Its own test binary: the "logged once" flags are process-wide, and the pairwise
//! tests in `tests/misorder.rs` trip every one of them.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tollgate::error::ErrorResponseLayer;
use tollgate::fallback::FallbackLayer;
use tollgate::provider::mock::MockProvider;
use tollgate::provider::{Dispatch, Provider};
use tollgate::request::ParseLayer;
use tollgate::route::{ModelRoute, RouteHandle, RouteLayer, RouteTable};
use tollgate::target::Target;
use tollgate::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};

#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

/// Timeout outside Fallback used to apply no deadline at all: now two requests get 500
/// `misconfigured_stack` naming FallbackLayer, and one error line names both layers.
#[tokio::test]
async fn timeout_outside_fallback_is_logged_once() {
    let log = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let p: Arc<dyn Provider> = Arc::new(MockProvider::new("mock"));
    let table = RouteTable::builder()
        .model(ModelRoute::new("m", vec![Target::new(p, "ok").into_arc()]))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(ParseLayer::new())
        .layer(RouteLayer::new(RouteHandle::new(table)))
        .layer(TimeoutLayer::new())
        .layer(FallbackLayer::new())
        .service(Dispatch::new());
    for _ in 0..2 {
        let req = http::Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            )))
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 500);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("misconfigured_stack") && text.contains("FallbackLayer"),
            "{text}"
        );
    }
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("misconfigured stack"))
        .collect();
    assert_eq!(lines.len(), 1, "logged once: {text}");
    assert!(
        lines[0].contains("ERROR") && lines[0].contains("FallbackLayer"),
        "{text}"
    );
    assert!(lines[0].contains("TimeoutLayer"), "{text}");
}
