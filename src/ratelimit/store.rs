//! The [`LimitStore`] trait and the types that cross it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::window::Windows;
use super::{LimitKind, Limits, Scope};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a store returns: ready at once (the in-memory store: no allocation) or a boxed future
/// (a networked store).
pub enum StoreFuture<T> {
    /// Already done.
    Ready(Option<T>),
    /// Still to do.
    Boxed(BoxFuture<T>),
}

impl<T> StoreFuture<T> {
    /// A finished future.
    pub fn ready(value: T) -> Self {
        StoreFuture::Ready(Some(value))
    }
    /// Box `fut`.
    pub fn boxed(fut: impl Future<Output = T> + Send + 'static) -> Self {
        StoreFuture::Boxed(Box::pin(fut))
    }
    /// The value when this future is already complete; otherwise the future back.
    pub fn now_or(self) -> Result<T, Self> {
        match self {
            StoreFuture::Ready(Some(v)) => Ok(v),
            other => Err(other),
        }
    }
}

impl<T> fmt::Debug for StoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreFuture::Ready(_) => "StoreFuture::Ready",
            StoreFuture::Boxed(_) => "StoreFuture::Boxed",
        })
    }
}

impl<T: Unpin> Future for StoreFuture<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            StoreFuture::Ready(v) => match v.take() {
                Some(v) => Poll::Ready(v),
                None => Poll::Pending,
            },
            StoreFuture::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

/// A store failure (unreachable, timeout, protocol). Never contains a key or secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("limit store unavailable: {0}")]
pub struct StoreError(pub String);

/// One request's check-and-reserve: every applicable scope with its limits, and the amounts
/// to reserve in each (1 request, `tokens`, 1 concurrency slot, `cost_pico`).
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    /// The time (Unix ms) that picks the windows.
    pub now_ms: u64,
    /// The scopes to check, in order (key, model, global); scopes without limits are left out.
    pub scopes: Vec<(Scope, Limits)>,
    /// Tokens to reserve (prompt estimate + max tokens).
    pub tokens: u64,
    /// Spend to reserve, pico-USD (the worst case).
    pub cost_pico: u64,
}

impl ReserveRequest {
    /// The amount of `kind` this request reserves.
    pub fn amount(&self, kind: LimitKind) -> u64 {
        match kind {
            LimitKind::Requests | LimitKind::Concurrency => 1,
            LimitKind::Tokens => self.tokens,
            LimitKind::BudgetDay | LimitKind::BudgetMonth => self.cost_pico,
        }
    }

    /// Every (scope index, kind, limit) to check, in order.
    pub fn checks(&self) -> impl Iterator<Item = (usize, LimitKind, u64)> + '_ {
        self.scopes.iter().enumerate().flat_map(|(i, (_, l))| {
            LimitKind::ALL
                .iter()
                .filter_map(move |k| l.get(*k).map(|lim| (i, *k, lim)))
        })
    }
}

/// The state of one limit, as the `x-ratelimit-*` headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The limit.
    pub limit: u64,
    /// What is left in the window (after this request, when admitted).
    pub remaining: u64,
    /// Time until the window resets.
    pub reset: Duration,
}

/// The tightest request and token quotas across the applicable scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateStatus {
    /// Requests per minute.
    pub requests: Option<Quota>,
    /// Tokens per minute.
    pub tokens: Option<Quota>,
}

/// Proof of an admitted reservation: what was reserved, where, and in which windows. Settle
/// it (or drop the reservation) exactly once.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The windows the reservation was made in.
    pub windows: Windows,
    /// The scopes charged.
    pub scopes: Vec<(Scope, Limits)>,
    /// Tokens reserved.
    pub tokens: u64,
    /// Spend reserved, pico-USD.
    pub cost_pico: u64,
    /// The concurrency lease's id (unique per reservation).
    pub lease: u64,
}

/// A refused reservation: which limit, and when it would fit.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The scope whose limit refused.
    pub scope: Scope,
    /// Which limit.
    pub kind: LimitKind,
    /// The limit.
    pub limit: u64,
    /// Used in the window before this request.
    pub used: u64,
    /// What this request needed.
    pub needed: u64,
    /// When it would fit (window reset; 1 s for concurrency, unknown).
    pub retry_after: Duration,
    /// Whether it can ever fit (`needed <= limit`).
    pub can_fit: bool,
    /// Header figures.
    pub status: RateStatus,
}

/// The answer to a [`ReserveRequest`].
#[derive(Debug, Clone)]
pub enum Decision {
    /// Reserved: call the upstream.
    Admitted {
        /// Settle with this.
        ticket: Ticket,
        /// Header figures.
        status: RateStatus,
    },
    /// Nothing reserved.
    Refused(Refusal),
}

/// The exact usage to settle a ticket with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settlement {
    /// Tokens actually used (prompt + completion).
    pub tokens: u64,
    /// Spend, pico-USD.
    pub cost_pico: u64,
}

/// Where counters live. A store does the check-and-reserve of every limit of a request
/// atomically, and settles a ticket (refund or charge the difference, release the concurrency
/// slot) in one step.
pub trait LimitStore: Send + Sync + 'static {
    /// Check every limit of `req`; reserve all of them, or none.
    fn reserve(&self, req: ReserveRequest) -> StoreFuture<Result<Decision, StoreError>>;

    /// Settle `ticket`: with `Some(actual)`, charge `actual` instead of what was reserved
    /// (refunding or adding the difference in the ticket's windows); with `None`, keep the
    /// reserved amounts. Either way release the concurrency slots.
    fn settle(
        &self,
        ticket: Ticket,
        actual: Option<Settlement>,
    ) -> StoreFuture<Result<(), StoreError>>;
}

/// One evaluated counter: used before the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub scope: usize,
    pub kind: LimitKind,
    pub limit: u64,
    pub used: u64,
    pub amount: u64,
}

impl View {
    pub(crate) fn fits(&self) -> bool {
        self.used
            .checked_add(self.amount)
            .is_some_and(|t| t <= self.limit)
    }
}

/// Build the decision from the views (used before the request) and whether it was admitted.
pub(crate) fn decide(req: ReserveRequest, views: &[View], lease: u64) -> Decision {
    let w = Windows::at(req.now_ms);
    let failed = views.iter().find(|v| !v.fits()).copied();
    let admitted = failed.is_none();
    let mut status = RateStatus::default();
    for v in views {
        let slot = match v.kind {
            LimitKind::Requests => &mut status.requests,
            LimitKind::Tokens => &mut status.tokens,
            _ => continue,
        };
        let after = if admitted {
            v.used.saturating_add(v.amount)
        } else {
            v.used
        };
        let q = Quota {
            limit: v.limit,
            remaining: v.limit.saturating_sub(after),
            reset: w.reset(v.kind),
        };
        if slot.is_none_or(|s| q.remaining < s.remaining) {
            *slot = Some(q);
        }
    }
    match failed {
        None => Decision::Admitted {
            ticket: Ticket {
                windows: w,
                scopes: req.scopes,
                tokens: req.tokens,
                cost_pico: req.cost_pico,
                lease,
            },
            status,
        },
        Some(v) => Decision::Refused(Refusal {
            scope: req
                .scopes
                .get(v.scope)
                .map(|s| s.0.clone())
                .unwrap_or(Scope::Global),
            kind: v.kind,
            limit: v.limit,
            used: v.used,
            needed: v.amount,
            retry_after: match v.kind {
                LimitKind::Concurrency => Duration::from_secs(1),
                k => w.reset(k).max(Duration::from_millis(1)),
            },
            can_fit: v.amount <= v.limit,
            status,
        }),
    }
}
