//! The meter's metric handles, cached per (recorder, model, target).
//!
//! A `counter!`/`histogram!` call with labels builds a [`metrics::Key`] (a label vector),
//! hashes it and looks it up in the recorder's registry — about a microsecond for the eight
//! series one request updates. The handles it returns stay valid, so they are kept here, keyed
//! by the addresses of the recorder, of the model's shared name and of the serving target's
//! id. The entry holds clones of both names, so neither address can be reused by another name
//! while the entry lives; the recorder's address makes a test's local recorder (or a recorder
//! installed later) get its own handles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Histogram, SharedString};

use crate::metrics as m;
use crate::usage::Outcome;

/// Past this many entries the cache is cleared (route reloads leave old names behind).
const MAX_ENTRIES: usize = 4096;

type Key = (usize, usize, usize);

/// Cached handles for every (model, target) the meter has seen.
#[derive(Default)]
pub(crate) struct SeriesCache {
    map: Mutex<HashMap<Key, Arc<Series>>>,
}

/// The labelled series of one (model, provider) pair, registered on first use.
pub(crate) struct Series {
    model: SharedString,
    provider: SharedString,
    // Keep the names alive: the cache key is their address.
    _names: (Arc<str>, Option<Arc<str>>),
    by_outcome: Mutex<Vec<(Outcome, &'static str, Counter, Histogram)>>,
    input: OnceLock<Histogram>,
    output: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    tpot: OnceLock<Histogram>,
    overhead: OnceLock<Histogram>,
    cost: OnceLock<Counter>,
}

fn recorder_addr() -> usize {
    metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize)
}

impl SeriesCache {
    /// The series of `model` served by (or last tried on) the target `target_id`
    /// (`provider/model`), whose provider label is `provider`.
    pub(crate) fn get(
        &self,
        model: &Arc<str>,
        target_id: Option<&Arc<str>>,
        provider: Option<&str>,
    ) -> Arc<Series> {
        let key = (
            recorder_addr(),
            Arc::as_ptr(model).cast::<u8>() as usize,
            target_id.map_or(0, |t| Arc::as_ptr(t).cast::<u8>() as usize),
        );
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&key) {
            return s.clone();
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        let series = Arc::new(Series::new(
            model.clone(),
            target_id.cloned(),
            provider.map(Arc::<str>::from),
        ));
        map.insert(key, series.clone());
        series
    }
}

impl Series {
    /// Uncached series (a model name that is not the route table's, e.g. an unknown model).
    pub(crate) fn new(
        model: Arc<str>,
        target_id: Option<Arc<str>>,
        provider: Option<Arc<str>>,
    ) -> Series {
        Series {
            model: SharedString::from_shared(model.clone()),
            provider: provider.map_or(SharedString::const_str("none"), SharedString::from_shared),
            _names: (model, target_id),
            by_outcome: Mutex::new(Vec::new()),
            input: OnceLock::new(),
            output: OnceLock::new(),
            ttft: OnceLock::new(),
            tpot: OnceLock::new(),
            overhead: OnceLock::new(),
            cost: OnceLock::new(),
        }
    }

    /// `requests` by outcome and status class, and the operation duration by outcome.
    pub(crate) fn by_outcome(
        &self,
        outcome: Outcome,
        status_class: &'static str,
    ) -> (Counter, Histogram) {
        let mut v = self.by_outcome.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, c, h)) = v
            .iter()
            .find(|(o, s, _, _)| *o == outcome && *s == status_class)
        {
            return (c.clone(), h.clone());
        }
        let c = metrics::counter!(m::REQUESTS,
            "outcome" => outcome.as_str(),
            "status_class" => status_class,
            "model" => self.model.clone(),
            "provider" => self.provider.clone());
        let h = metrics::histogram!(m::OPERATION_DURATION,
            "model" => self.model.clone(), "provider" => self.provider.clone(), "outcome" => outcome.as_str());
        v.push((outcome, status_class, c.clone(), h.clone()));
        (c, h)
    }

    pub(crate) fn input_tokens(&self) -> &Histogram {
        self.input.get_or_init(|| {
            metrics::histogram!(m::TOKEN_USAGE,
                "gen_ai.token.type" => "input", "model" => self.model.clone(), "provider" => self.provider.clone())
        })
    }

    pub(crate) fn output_tokens(&self) -> &Histogram {
        self.output.get_or_init(|| {
            metrics::histogram!(m::TOKEN_USAGE,
                "gen_ai.token.type" => "output", "model" => self.model.clone(), "provider" => self.provider.clone())
        })
    }

    pub(crate) fn ttft(&self) -> &Histogram {
        self.ttft.get_or_init(|| {
            metrics::histogram!(m::TIME_TO_FIRST_TOKEN, "model" => self.model.clone(), "provider" => self.provider.clone())
        })
    }

    pub(crate) fn time_per_output_token(&self) -> &Histogram {
        self.tpot.get_or_init(|| {
            metrics::histogram!(m::TIME_PER_OUTPUT_TOKEN, "model" => self.model.clone(), "provider" => self.provider.clone())
        })
    }

    pub(crate) fn overhead(&self) -> &Histogram {
        self.overhead
            .get_or_init(|| metrics::histogram!(m::GATEWAY_OVERHEAD))
    }

    pub(crate) fn cost(&self) -> &Counter {
        self.cost.get_or_init(|| {
            metrics::counter!(m::COST_PICO_USD, "model" => self.model.clone(), "provider" => self.provider.clone())
        })
    }
}
