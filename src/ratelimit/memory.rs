//! [`MemoryStore`]: the embedded default.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::store::{Decision, ReserveRequest, Settlement, StoreError, StoreFuture, Ticket, View};
use super::window::Windows;
use super::{LimitKind, LimitStore, Scope, decide};

#[derive(Debug, Default, Clone, Copy)]
struct Win {
    id: u64,
    used: u64,
}

impl Win {
    fn used_in(&self, id: u64) -> u64 {
        if self.id == id { self.used } else { 0 }
    }
    fn add(&mut self, id: u64, n: u64) {
        if self.id != id {
            *self = Win { id, used: 0 };
        }
        self.used = self.used.saturating_add(n);
    }
    fn adjust(&mut self, id: u64, reserved: u64, actual: u64) {
        if self.id == id {
            self.used = self.used.saturating_sub(reserved).saturating_add(actual);
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: Win,
    tokens: Win,
    day: Win,
    month: Win,
    in_flight: u64,
}

impl Counters {
    fn used(&self, kind: LimitKind, w: &Windows) -> u64 {
        match kind {
            LimitKind::Requests => self.requests.used_in(w.minute),
            LimitKind::Tokens => self.tokens.used_in(w.minute),
            LimitKind::BudgetDay => self.day.used_in(w.day),
            LimitKind::BudgetMonth => self.month.used_in(w.month),
            LimitKind::Concurrency => self.in_flight,
        }
    }
    fn add(&mut self, kind: LimitKind, w: &Windows, n: u64) {
        match kind {
            LimitKind::Requests => self.requests.add(w.minute, n),
            LimitKind::Tokens => self.tokens.add(w.minute, n),
            LimitKind::BudgetDay => self.day.add(w.day, n),
            LimitKind::BudgetMonth => self.month.add(w.month, n),
            LimitKind::Concurrency => self.in_flight = self.in_flight.saturating_add(n),
        }
    }
}

/// Counters in process memory, behind one mutex: a request's check-and-reserve across all its
/// scopes is one critical section (a few hash lookups), so admission is exact under any
/// number of concurrent callers.
///
/// Windows are **fixed**, aligned to UTC: requests and tokens per minute reset at the top of
/// each minute, budgets at UTC midnight and on the 1st of the month. (A burst straddling a
/// minute boundary can see up to twice the per-minute limit within 60 s; within one window the
/// count is exact.) Settling a ticket whose window has passed changes nothing (the window is
/// gone). Memory grows with the number of distinct scopes (keys and limited models), not with
/// traffic.
#[derive(Debug, Default)]
pub struct MemoryStore {
    counters: Mutex<HashMap<Scope, Counters>>,
    leases: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The amount of `kind` used in `scope` in the windows at `now_ms` (for tests and
    /// introspection).
    pub fn used(&self, scope: &Scope, kind: LimitKind, now_ms: u64) -> u64 {
        let w = Windows::at(now_ms);
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        map.get(scope).map_or(0, |c| c.used(kind, &w))
    }

    /// Synchronous check-and-reserve.
    pub fn reserve_now(&self, req: ReserveRequest) -> Decision {
        let w = Windows::at(req.now_ms);
        let lease = self.leases.fetch_add(1, Ordering::Relaxed);
        let mut views: Vec<View> = Vec::with_capacity(8);
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for (i, kind, limit) in req.checks() {
            let used = map.get(&req.scopes[i].0).map_or(0, |c| c.used(kind, &w));
            views.push(View {
                scope: i,
                kind,
                limit,
                used,
                amount: req.amount(kind),
            });
        }
        if views.iter().all(View::fits) {
            for (scope, limits) in &req.scopes {
                let c = match map.get_mut(scope) {
                    Some(c) => c,
                    None => map.entry(scope.clone()).or_default(),
                };
                for kind in LimitKind::ALL {
                    if limits.get(kind).is_some() {
                        c.add(kind, &w, req.amount(kind));
                    }
                }
            }
        }
        drop(map);
        decide(req, &views, lease)
    }

    /// Synchronous settle.
    pub fn settle_now(&self, ticket: &Ticket, actual: Option<Settlement>) {
        let w = &ticket.windows;
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for (scope, limits) in &ticket.scopes {
            let Some(c) = map.get_mut(scope) else {
                continue;
            };
            if limits.concurrent_requests.is_some() {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
            let Some(a) = actual else { continue };
            if limits.tokens_per_minute.is_some() {
                c.tokens.adjust(w.minute, ticket.tokens, a.tokens);
            }
            if limits.budget_per_day_pico.is_some() {
                c.day.adjust(w.day, ticket.cost_pico, a.cost_pico);
            }
            if limits.budget_per_month_pico.is_some() {
                c.month.adjust(w.month, ticket.cost_pico, a.cost_pico);
            }
        }
    }
}

impl LimitStore for MemoryStore {
    fn reserve(&self, req: ReserveRequest) -> StoreFuture<Result<Decision, StoreError>> {
        StoreFuture::ready(Ok(self.reserve_now(req)))
    }

    fn settle(
        &self,
        ticket: Ticket,
        actual: Option<Settlement>,
    ) -> StoreFuture<Result<(), StoreError>> {
        self.settle_now(&ticket, actual);
        StoreFuture::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Limits;
    use std::sync::Arc;

    const T0: u64 = 1_795_623_240_000; // the top of a minute

    fn req(scopes: Vec<(Scope, Limits)>, tokens: u64, cost: u64) -> ReserveRequest {
        ReserveRequest {
            now_ms: T0 + 1000,
            scopes,
            tokens,
            cost_pico: cost,
        }
    }

    #[test]
    fn all_or_nothing_across_scopes() {
        let s = MemoryStore::new();
        let key = Scope::Key(Arc::from("k"));
        let scopes = vec![
            (key.clone(), Limits::new().requests_per_minute(10)),
            (Scope::Global, Limits::new().tokens_per_minute(100)),
        ];
        let Decision::Admitted { status, .. } = s.reserve_now(req(scopes.clone(), 60, 0)) else {
            panic!("refused")
        };
        assert_eq!(status.requests.unwrap().remaining, 9);
        assert_eq!(status.tokens.unwrap().remaining, 40);
        // Tokens refuse: the key's request counter must not move.
        let Decision::Refused(r) = s.reserve_now(req(scopes, 60, 0)) else {
            panic!("admitted")
        };
        assert_eq!(
            (r.kind, r.scope, r.used, r.needed),
            (LimitKind::Tokens, Scope::Global, 60, 60)
        );
        assert_eq!(r.retry_after, std::time::Duration::from_secs(59));
        assert_eq!(s.used(&key, LimitKind::Requests, T0), 1);
    }

    #[test]
    fn settle_refunds_and_releases() {
        let s = MemoryStore::new();
        let l = Limits::new()
            .tokens_per_minute(1000)
            .concurrent_requests(1)
            .pico_per_day(1000);
        let Decision::Admitted { ticket, .. } =
            s.reserve_now(req(vec![(Scope::Global, l)], 500, 800))
        else {
            panic!("refused")
        };
        assert!(matches!(
            s.reserve_now(req(vec![(Scope::Global, l)], 1, 1)),
            Decision::Refused(r) if r.kind == LimitKind::Concurrency
        ));
        s.settle_now(
            &ticket,
            Some(Settlement {
                tokens: 120,
                cost_pico: 300,
            }),
        );
        assert_eq!(s.used(&Scope::Global, LimitKind::Tokens, T0), 120);
        assert_eq!(s.used(&Scope::Global, LimitKind::BudgetDay, T0), 300);
        assert_eq!(s.used(&Scope::Global, LimitKind::Concurrency, T0), 0);
        // Next minute: the token window is fresh, the day budget is not.
        assert_eq!(s.used(&Scope::Global, LimitKind::Tokens, T0 + 60_000), 0);
        assert_eq!(
            s.used(&Scope::Global, LimitKind::BudgetDay, T0 + 60_000),
            300
        );
    }
}
