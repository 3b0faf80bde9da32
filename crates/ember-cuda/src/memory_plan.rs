//! Start-up memory sizing: the KV cache gets what `gpu_memory_utilization` leaves after the
//! weights (already loaded), the activation workspace and everything else on the device.

/// The numbers behind the KV-cache size, logged at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Device memory in total.
    pub total_bytes: u64,
    /// `total_bytes * gpu_memory_utilization`.
    pub budget_bytes: u64,
    /// Memory in use when the plan was made (weights, context, other processes).
    pub used_bytes: u64,
    /// Reserved for activations, the attention scratch and cuBLAS.
    pub workspace_bytes: u64,
    /// Left for the KV cache.
    pub kv_cache_bytes: u64,
    /// KV blocks that fit.
    pub num_blocks: usize,
}

/// Plans the KV cache from the device's `(free, total)` memory; an error message names the
/// numbers when not even one block fits.
pub fn plan_kv_cache(
    free_bytes: u64,
    total_bytes: u64,
    gpu_memory_utilization: f32,
    workspace_bytes: u64,
    block_bytes: u64,
) -> Result<MemoryPlan, String> {
    if !(gpu_memory_utilization > 0.0 && gpu_memory_utilization <= 1.0) {
        return Err(format!(
            "gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
        ));
    }
    let budget_bytes = (total_bytes as f64 * f64::from(gpu_memory_utilization)) as u64;
    let used_bytes = total_bytes.saturating_sub(free_bytes);
    let kv_cache_bytes = budget_bytes
        .saturating_sub(used_bytes)
        .saturating_sub(workspace_bytes)
        .min(free_bytes.saturating_sub(workspace_bytes));
    let num_blocks = (kv_cache_bytes / block_bytes.max(1)) as usize;
    let plan = MemoryPlan {
        total_bytes,
        budget_bytes,
        used_bytes,
        workspace_bytes,
        kv_cache_bytes,
        num_blocks,
    };
    if num_blocks == 0 {
        return Err(format!(
            "no room for the KV cache: {budget_bytes} bytes budget (gpu_memory_utilization \
             {gpu_memory_utilization} of {total_bytes}), {used_bytes} in use, {workspace_bytes} \
             for the workspace, one block needs {block_bytes}"
        ));
    }
    Ok(plan)
}

/// Activation workspace for steps of up to `max_tokens` rows: the largest live set of the
/// Llama forward pass (residual, normed hidden, q/k/v, attention output, gate/up/act, logits
/// rows) at `bytes_per_element`, plus decode-attention partials, rounded up to 2 MiB.
pub fn workspace_bytes(
    max_tokens: usize,
    hidden: usize,
    q_dim: usize,
    kv_dim: usize,
    intermediate: usize,
    vocab: usize,
    bytes_per_element: usize,
) -> u64 {
    let per_token = 3 * hidden + 2 * q_dim + 2 * kv_dim + 3 * intermediate + vocab;
    // f32 partial outputs of split decode: [tokens, heads, splits <= 64, head_dim] bounded by 64 * q_dim.
    let partials = max_tokens.min(256) * 64 * (q_dim + 64) * 4;
    let bytes = (max_tokens * per_token * bytes_per_element + partials + vocab * max_tokens * 4) as u64;
    bytes.div_ceil(2 << 20) * (2 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn kv_cache_gets_the_rest_of_the_budget() {
        // 80 GiB device, 16 GiB in use after loading weights, 2 GiB workspace.
        let plan = plan_kv_cache(64 * GIB, 80 * GIB, 0.75, 2 * GIB, 2 << 20).unwrap();
        assert_eq!(plan.budget_bytes, 60 * GIB);
        assert_eq!(plan.used_bytes, 16 * GIB);
        assert_eq!(plan.kv_cache_bytes, 42 * GIB);
        assert_eq!(plan.num_blocks, 42 * 512);
    }

    #[test]
    fn other_processes_and_bad_fractions_are_reported() {
        // Someone else holds 75 of 80 GiB: the 0.9 budget is already spent.
        let err = plan_kv_cache(5 * GIB, 80 * GIB, 0.9, GIB, 1 << 20).unwrap_err();
        assert!(err.contains("no room"), "{err}");
        assert!(plan_kv_cache(GIB, GIB, 0.0, 0, 1).is_err());
        assert!(plan_kv_cache(GIB, GIB, 1.5, 0, 1).is_err());
        // Free memory caps the cache even when the budget is generous.
        let plan = plan_kv_cache(10 * GIB, 80 * GIB, 1.0, GIB, GIB).unwrap();
        assert_eq!(plan.num_blocks, 9);
    }

    #[test]
    fn workspace_is_rounded_and_grows_with_tokens() {
        let small = workspace_bytes(16, 576, 576, 192, 1536, 49152, 2);
        let large = workspace_bytes(2048, 576, 576, 192, 1536, 49152, 2);
        assert_eq!(small % (2 << 20), 0);
        assert!(large > small);
    }
}
