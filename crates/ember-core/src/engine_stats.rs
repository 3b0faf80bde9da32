//! Every statistic of `Engine.stats()` and `/metrics`, defined once ([`STAT_SPECS`]): its key,
//! Prometheus name, kind, help text and how to read it from one snapshot ([`EngineStats`]).

use crate::backend_stats::BackendStats;
use crate::scheduler_stats::SchedulerStats;

/// LoRA adapter gauges and counters (zeros without LoRA).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoraStats {
    /// Adapters loaded now.
    pub num_loaded_adapters: u64,
    /// Distinct adapters used by live (waiting or running) requests now.
    pub num_active_adapters: u64,
    /// Adapter loads since start (a reload after an eviction counts again).
    pub num_adapter_loads: u64,
    /// Idle adapters unloaded to make room (`max_cpu_loras`) since start.
    pub num_adapter_evictions: u64,
    /// Wall time spent reading, checking and loading adapters, in seconds.
    pub adapter_load_s: f64,
}

/// One snapshot of the engine's statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// The scheduler's gauges and counters.
    pub scheduler: SchedulerStats,
    /// The backend's counters (CUDA graphs).
    pub backend: BackendStats,
    /// The LoRA registry's gauges and counters.
    pub lora: LoraStats,
}

/// How a statistic behaves over time and across data-parallel replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    /// A count since start (summed over replicas).
    Counter,
    /// A value now (summed over replicas).
    Gauge,
    /// A value now, averaged over replicas weighted by their KV-cache blocks.
    AveragedGauge,
    /// `part / whole` of two counters (recomputed from the replicas' summed counters).
    Ratio {
        /// Key of the numerator counter.
        part: &'static str,
        /// Key of the denominator counter.
        whole: &'static str,
    },
}

impl StatKind {
    /// The kind's name as Python sees it: counter, gauge, averaged_gauge, ratio.
    pub fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::AveragedGauge => "averaged_gauge",
            Self::Ratio { .. } => "ratio",
        }
    }
}

/// One statistic: the one place its name, kind and help text are written.
pub struct StatSpec {
    /// Key in `Engine.stats()`.
    pub key: &'static str,
    /// Prometheus metric name (counters end in `_total`).
    pub metric: &'static str,
    /// How it behaves.
    pub kind: StatKind,
    /// Prometheus help text.
    pub help: &'static str,
    /// Its value in a snapshot.
    pub value: fn(&EngineStats) -> f64,
}

const fn spec(
    key: &'static str,
    metric: &'static str,
    kind: StatKind,
    help: &'static str,
    value: fn(&EngineStats) -> f64,
) -> StatSpec {
    StatSpec {
        key,
        metric,
        kind,
        help,
        value,
    }
}

use StatKind::{AveragedGauge, Counter, Gauge};

/// Every statistic, in the order `/metrics` lists them.
pub const STAT_SPECS: &[StatSpec] = &[
    spec(
        "num_running",
        "ember_num_requests_running",
        Gauge,
        "Requests currently scheduled.",
        |s| s.scheduler.num_running as f64,
    ),
    spec(
        "num_waiting",
        "ember_num_requests_waiting",
        Gauge,
        "Requests waiting to be scheduled.",
        |s| s.scheduler.num_waiting as f64,
    ),
    spec(
        "kv_cache_usage",
        "ember_kv_cache_usage_ratio",
        AveragedGauge,
        "Fraction of KV-cache blocks in use (0 to 1).",
        |s| f64::from(s.scheduler.kv_cache_usage),
    ),
    spec(
        "prefix_cache_hit_rate",
        "ember_prefix_cache_hit_rate",
        StatKind::Ratio {
            part: "prefix_cache_hits",
            whole: "prefix_cache_queries",
        },
        "Prefix-cache hits per queried token.",
        |s| s.scheduler.prefix_cache_hit_rate(),
    ),
    spec(
        "prefix_cache_queries",
        "ember_prefix_cache_queries_total",
        Counter,
        "Prompt tokens looked up in the prefix cache.",
        |s| s.scheduler.prefix_cache_queries as f64,
    ),
    spec(
        "prefix_cache_hits",
        "ember_prefix_cache_hits_total",
        Counter,
        "Prompt tokens found in the prefix cache.",
        |s| s.scheduler.prefix_cache_hits as f64,
    ),
    spec(
        "num_forked_tokens",
        "ember_forked_tokens_total",
        Counter,
        "Prompt tokens a forked request (n > 1) shared from its sibling instead of computing them.",
        |s| s.scheduler.num_forked_tokens as f64,
    ),
    spec(
        "num_preemptions",
        "ember_num_preemptions_total",
        Counter,
        "Requests preempted for lack of KV-cache space.",
        |s| s.scheduler.num_preemptions as f64,
    ),
    spec(
        "num_prompt_tokens",
        "ember_prompt_tokens_total",
        Counter,
        "Prompt tokens processed.",
        |s| s.scheduler.num_prompt_tokens as f64,
    ),
    spec(
        "num_generation_tokens",
        "ember_generation_tokens_total",
        Counter,
        "Tokens generated.",
        |s| s.scheduler.num_generation_tokens as f64,
    ),
    spec(
        "num_structured_masks",
        "ember_structured_masks_total",
        Counter,
        "Token masks computed for structured output.",
        |s| s.scheduler.num_structured_masks as f64,
    ),
    spec(
        "structured_mask_s",
        "ember_structured_mask_seconds_total",
        Counter,
        "Wall time of structured-output mask computation, in seconds.",
        |s| s.scheduler.structured_mask_s,
    ),
    spec(
        "num_window_freed_blocks",
        "ember_window_freed_blocks_total",
        Counter,
        "KV-cache blocks released early because they fell wholly before a sliding window.",
        |s| s.scheduler.num_window_freed_blocks as f64,
    ),
    spec(
        "num_spec_proposed_tokens",
        "ember_spec_proposed_tokens_total",
        Counter,
        "Speculative draft tokens proposed and verified.",
        |s| s.scheduler.num_spec_proposed_tokens as f64,
    ),
    spec(
        "num_spec_accepted_tokens",
        "ember_spec_accepted_tokens_total",
        Counter,
        "Speculative draft tokens accepted (equal to what plain decoding samples).",
        |s| s.scheduler.num_spec_accepted_tokens as f64,
    ),
    spec(
        "num_spec_verify_steps",
        "ember_spec_verify_steps_total",
        Counter,
        "Speculative verifications run.",
        |s| s.scheduler.num_spec_verify_steps as f64,
    ),
    spec(
        "spec_acceptance_rate",
        "ember_spec_acceptance_rate",
        StatKind::Ratio {
            part: "num_spec_accepted_tokens",
            whole: "num_spec_proposed_tokens",
        },
        "Accepted per proposed speculative draft token.",
        |s| s.scheduler.spec_acceptance_rate(),
    ),
    spec(
        "spec_mean_accepted_len",
        "ember_spec_mean_accepted_length",
        StatKind::Ratio {
            part: "num_spec_accepted_tokens",
            whole: "num_spec_verify_steps",
        },
        "Draft tokens accepted per speculative verification.",
        |s| s.scheduler.spec_mean_accepted_len(),
    ),
    spec(
        "num_cuda_graphs_captured",
        "ember_cuda_graphs_captured_total",
        Counter,
        "Decode CUDA graphs captured.",
        |s| s.backend.num_cuda_graphs_captured as f64,
    ),
    spec(
        "num_cuda_graph_replays",
        "ember_cuda_graph_replays_total",
        Counter,
        "Decode steps run from a CUDA graph.",
        |s| s.backend.num_cuda_graph_replays as f64,
    ),
    spec(
        "num_cuda_graph_failures",
        "ember_cuda_graph_failures_total",
        Counter,
        "CUDA graph warm-ups or captures that failed (their steps run eagerly).",
        |s| s.backend.num_cuda_graph_failures as f64,
    ),
    spec(
        "num_loaded_adapters",
        "ember_lora_adapters_loaded",
        Gauge,
        "LoRA adapters loaded.",
        |s| s.lora.num_loaded_adapters as f64,
    ),
    spec(
        "num_active_adapters",
        "ember_lora_adapters_active",
        Gauge,
        "Distinct LoRA adapters used by waiting or running requests.",
        |s| s.lora.num_active_adapters as f64,
    ),
    spec(
        "num_adapter_loads",
        "ember_lora_adapter_loads_total",
        Counter,
        "LoRA adapter loads (a reload after an eviction counts again).",
        |s| s.lora.num_adapter_loads as f64,
    ),
    spec(
        "num_adapter_evictions",
        "ember_lora_adapter_evictions_total",
        Counter,
        "Idle LoRA adapters unloaded to stay within max_cpu_loras.",
        |s| s.lora.num_adapter_evictions as f64,
    ),
    spec(
        "adapter_load_s",
        "ember_lora_adapter_load_seconds_total",
        Counter,
        "Wall time spent reading, checking and loading LoRA adapters, in seconds.",
        |s| s.lora.adapter_load_s,
    ),
];

impl EngineStats {
    /// Every statistic as `(key, value)`, in [`STAT_SPECS`] order.
    pub fn as_pairs(&self) -> Vec<(&'static str, f64)> {
        STAT_SPECS.iter().map(|s| (s.key, (s.value)(self))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn specs_are_unique_well_named_and_ratios_read_their_counters() {
        let keys: HashSet<_> = STAT_SPECS.iter().map(|s| s.key).collect();
        let metrics: HashSet<_> = STAT_SPECS.iter().map(|s| s.metric).collect();
        assert_eq!((keys.len(), metrics.len()), (STAT_SPECS.len(), STAT_SPECS.len()));
        let mut stats = EngineStats::default();
        stats.scheduler.prefix_cache_queries = 8;
        stats.scheduler.prefix_cache_hits = 2;
        stats.scheduler.num_spec_proposed_tokens = 10;
        stats.scheduler.num_spec_accepted_tokens = 4;
        stats.scheduler.num_spec_verify_steps = 5;
        let values: std::collections::HashMap<_, _> = stats.as_pairs().into_iter().collect();
        for s in STAT_SPECS {
            let valid = |c: char| c.is_ascii_lowercase() || c == '_';
            assert!(
                s.metric.starts_with("ember_") && s.metric.chars().all(valid),
                "{}",
                s.metric
            );
            assert_eq!(s.kind == Counter, s.metric.ends_with("_total"), "{}", s.metric);
            assert!(!s.help.is_empty() && s.help.ends_with('.'), "{}", s.key);
            if let StatKind::Ratio { part, whole } = s.kind {
                let counter = |k: &str| STAT_SPECS.iter().any(|c| c.key == k && c.kind == Counter);
                assert!(counter(part) && counter(whole), "{}", s.key);
                assert_eq!(values[s.key], values[part] / values[whole], "{}", s.key);
            }
        }
        assert_eq!(values["prefix_cache_hit_rate"], 0.25);
    }
}
