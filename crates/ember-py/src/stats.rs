//! `stat_specs()`: every statistic's key, Prometheus name, kind and help text from
//! `ember_core::STAT_SPECS`, so Python's `/metrics` and data-parallel totals derive from it.

use ember_core::{StatKind, STAT_SPECS};
use pyo3::prelude::*;

use crate::guard::guard;

/// One statistic as Python sees it: `(key, metric, kind, help, ratio part key, ratio whole key)`.
type PyStatSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

/// Every statistic of `Engine.stats()`, in `/metrics` order.
#[pyfunction]
pub fn stat_specs() -> PyResult<Vec<PyStatSpec>> {
    guard(|| {
        Ok(STAT_SPECS
            .iter()
            .map(|s| {
                let (part, whole) = match s.kind {
                    StatKind::Ratio { part, whole } => (Some(part), Some(whole)),
                    _ => (None, None),
                };
                (s.key, s.metric, s.kind.name(), s.help, part, whole)
            })
            .collect())
    })
}
