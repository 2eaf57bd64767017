//! Facts flow down, reports flow up: every request extension and response report, in one table.
//!
//! Layers never share a mutable ledger. Each fact a layer learns about a request goes **down**
//! to the inner layers as a request extension, written once; each thing a layer did goes **up**
//! as a report on the response's extensions — or, when it answers with an error, on the
//! [`GatewayError`]'s [`ErrorContext`], so refusals and exhausted chains carry the same
//! context. Every report has exactly one writer; any outer layer may read it, and none depends
//! on another's presence (a layer that finds no report records less, it never fails).
//!
//! **Down** (request extensions):
//!
//! | extension | written by | read by |
//! |---|---|---|
//! | [`ParsedRequest`] | Parse | everyone |
//! | [`KeyIdentity`] | Auth | RateLimit (its limits), Route (the sticky key), Dispatch |
//! | [`RouteDecision`] | Route | Fallback |
//! | [`Attempt`] | Fallback (one per try) | Timeout, Dispatch |
//! | [`ResponseStoreHandle`] | the [gateway](crate::gateway), on `/v1/responses…` (or your own `map_request`) | the Responses endpoint (`previous_response_id`, `store`) |
//! | [`Drain`] | the server (the gateway's accept loop) | Parse (refuses a body still arriving at shutdown), StreamPassthrough (when the drain period is over: ends a stream in-band, answers 503 to a request still waiting for its answer) |
//!
//! **Up** (response extensions; the same on [`GatewayError::context`]):
//!
//! | report | written by | read by |
//! |---|---|---|
//! | [`KeyIdentity`] ([`ErrorContext::key`]) | Auth | UsageMeter |
//! | [`Routed`] ([`ErrorContext::routed`]) | Route | RateLimit (price), UsageMeter |
//! | [`ServedBy`] ([`ErrorContext::attempts`]) | Fallback | CostReport, UsageMeter |
//! | [`UsageReport`] ([`ErrorContext::usage`]) | StreamPassthrough (streams and JSON answers) | RateLimit (settles), UsageMeter |
//!
//! A [`UsageReport`] is a handle: the stream layer puts it on the response at once and fills it
//! through its [`UsageWriter`] as the body goes by; an outer layer reads it when its **own**
//! body ends — after the inner body has ended or been dropped, so the report is final. That is
//! how RateLimit settles a reservation with the real usage of a 60-second stream, and how the
//! UsageMeter writes one complete record, without either knowing the other exists.
//!
//! ```
//! use tollgate::ext::{UsageFacts, UsageReport};
//! use tollgate::usage::Usage;
//!
//! let (writer, report) = UsageReport::channel();
//! writer.publish(&UsageFacts {
//!     usage: Some(Usage { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7, ..Usage::default() }),
//!     done: true,
//!     ..UsageFacts::default()
//! });
//! // An outer layer, when its body ends:
//! assert_eq!(report.get().usage.unwrap().total_tokens, 7);
//! ```
//!
//! [`GatewayError`]: crate::error::GatewayError
//! [`GatewayError::context`]: crate::error::GatewayError::context
//! [`ResponseStoreHandle`]: crate::store::ResponseStoreHandle

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

pub use crate::auth::KeyIdentity;
pub use crate::request::ParsedRequest;
pub use crate::target::{Attempt, AttemptInfo, RouteDecision};

use crate::target::Target;
use crate::usage::{Units, Usage};

/// Route's report: the public model after alias resolution, and the split variant it chose.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The public model name after alias resolution (rules applied).
    pub model: Arc<str>,
    /// The A/B variant a weighted split chose, if any.
    pub variant: Option<Arc<str>>,
}

/// Fallback's report on a response: who served, and what was tried before.
#[derive(Debug, Clone)]
pub struct ServedBy {
    /// The target that served.
    pub target: Arc<Target>,
    /// Every attempt made, the serving one last.
    pub attempts: Arc<[AttemptInfo]>,
    /// Time spent waiting on upstreams (all attempts, up to the serving one's answer): what
    /// the gateway itself did not spend.
    pub upstream_wait: Duration,
}

/// What the stream layer learned from an answer's body: the upstream's usage, and for streams
/// how the stream went (for outcomes and, when no usage came, estimates).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageFacts {
    /// Exact usage, when the upstream reported it.
    pub usage: Option<Usage>,
    /// The stream ended properly (`[DONE]`, or `message_stop`).
    pub done: bool,
    /// An error event went to the client (the upstream's, or the gateway's in-band one).
    pub error: bool,
    /// The error kind label of an in-band (post-commit) failure.
    pub error_kind: Option<&'static str>,
    /// Content events seen (streams).
    pub events: u64,
    /// Bytes of generated text seen (for an estimate when no usage came).
    pub content_bytes: u64,
    /// Time from when the request was received to the first content event (streams).
    pub first_event_after: Option<Duration>,
    /// Why a usage the upstream sent was not taken as exact (unreadable, or absurd counts):
    /// `usage` is then `None`, the record carries an estimate with this reason, and a
    /// reservation settles at what it reserved.
    pub usage_rejected: Option<&'static str>,
    /// Units billed per image, character or second, when known.
    pub units: Option<Units>,
    /// `units` were counted by the gateway from the request (speech characters, images asked
    /// for), not reported by the upstream: the record says `estimated`.
    pub units_from_request: bool,
}

/// Where a server is in its shutdown. See [`Drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum DrainPhase {
    /// Accepting and serving.
    #[default]
    Serving,
    /// Shutdown began: no new connections; requests in flight may finish.
    Stopping,
    /// The drain period is over: streams still running end now, with an in-band error, and
    /// requests still waiting for their answer are answered 503.
    Over,
}

/// A request extension the server puts on each request: its view of the shutdown. Parse
/// refuses a request body still arriving once shutdown began (a half-sent request does not
/// hold the exit); when the drain period is over, the stream layer ends a stream still
/// running with the in-band error event, and answers 503 (`shutting_down`) to a request still
/// waiting for its upstream's answer (the upstream call is dropped); usage records are written
/// as usual. Without it (a stack composed by hand), nothing changes.
#[derive(Debug, Clone)]
pub struct Drain(watch::Receiver<DrainPhase>);

/// A future that resolves once a [`Drain`] reaches a phase (never, if its control is gone).
pub type DrainWait = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

impl Drain {
    /// The current phase.
    pub fn phase(&self) -> DrainPhase {
        *self.0.borrow()
    }

    /// Resolves when the phase is `phase` or later.
    pub fn wait(&self, phase: DrainPhase) -> DrainWait {
        let mut rx = self.0.clone();
        Box::pin(async move {
            if rx.wait_for(|p| *p >= phase).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// The server's side of a [`Drain`]: moves every request's view forward, and knows how long
/// the drain period lasts. Cheap to clone; all clones drive the same phase.
#[derive(Debug, Clone)]
pub struct DrainControl {
    tx: Arc<watch::Sender<DrainPhase>>,
    period: Duration,
}

impl DrainControl {
    /// A control in [`DrainPhase::Serving`] whose drain period is `period`.
    pub fn new(period: Duration) -> Self {
        let (tx, _) = watch::channel(DrainPhase::Serving);
        DrainControl {
            tx: Arc::new(tx),
            period,
        }
    }

    /// How long streams may run after shutdown began.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The extension to put on a request.
    pub fn drain(&self) -> Drain {
        Drain(self.tx.subscribe())
    }

    /// The current phase.
    pub fn phase(&self) -> DrainPhase {
        *self.tx.borrow()
    }

    /// Move to `phase` (never backwards).
    pub fn advance(&self, phase: DrainPhase) {
        self.tx.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }
}

/// The reader's side of a usage report: a shared, read-only view of what the one
/// [`UsageWriter`] published. Cheap to clone (a reference count).
#[derive(Clone, Default)]
pub struct UsageReport(Arc<Mutex<UsageFacts>>);

impl std::fmt::Debug for UsageReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("UsageReport").field(&self.get()).finish()
    }
}

impl UsageReport {
    /// A new report and its only writer.
    pub fn channel() -> (UsageWriter, UsageReport) {
        let shared = Arc::new(Mutex::new(UsageFacts::default()));
        (UsageWriter(shared.clone()), UsageReport(shared))
    }

    /// What has been published so far (final once the writer's body has ended or been dropped).
    pub fn get(&self) -> UsageFacts {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exact upstream usage, if reported.
    pub fn usage(&self) -> Option<Usage> {
        self.get().usage
    }
}

/// The writer's side of a [`UsageReport`]: not `Clone`, so each report has exactly one writer.
#[derive(Debug)]
pub struct UsageWriter(Arc<Mutex<UsageFacts>>);

impl UsageWriter {
    /// Publish `facts` (replacing what was published before).
    pub fn publish(&self, facts: &UsageFacts) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = *facts;
    }
}

/// The reports an error carries up, as a response carries them in its extensions: who asked
/// (Auth), where it was routed (Route), what was tried (Fallback), and any usage reported.
/// Written by the same layers, on the way out; read by the UsageMeter and RateLimit.
#[derive(Debug, Clone, Default)]
pub struct ErrorContext {
    /// The caller's identity (Auth).
    pub key: Option<KeyIdentity>,
    /// The routing decision (Route).
    pub routed: Option<Routed>,
    /// Every attempt made (Fallback), also when all failed.
    pub attempts: Option<Arc<[AttemptInfo]>>,
    /// Usage reported before the failure, if any: RateLimit settles with it, and without it a
    /// request refused or failed by its upstreams costs nothing. (No tollgate layer sets it
    /// today: a failure before the commit point has no usage; it is there for a layer of yours
    /// that fails after the upstream billed.)
    pub usage: Option<UsageReport>,
}
