//! Counters a backend keeps about its own work (CUDA graphs), merged into `Engine.stats()`.

/// Backend counters since the engine started; a backend without graphs keeps them at 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Decode graphs captured (one per batch and context bucket).
    pub num_cuda_graphs_captured: u64,
    /// Decode steps computed by launching a captured graph (the capturing step included).
    pub num_cuda_graph_replays: u64,
    /// Graph warm-ups or captures that failed; their key's steps run eagerly from then on.
    pub num_cuda_graph_failures: u64,
}
