//! The argument list of every `extern "C"` kernel of `cuda/`, as a struct with named, typed
//! fields in the kernel's parameter order (shapes as in `cuda/ember_kernels.h`). A launch site
//! fills the fields by name, so arguments cannot be swapped or miscounted; the order and
//! widths are checked against the compiled PTX by `scripts/check_kernel_signatures.py`.

use cudarc::driver::{DeviceRepr, LaunchArgs, PushKernelArg};

/// A device address (0 for null) passed to a kernel pointer parameter.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevPtr(pub u64);

impl DevPtr {
    /// The null pointer (an absent optional input).
    pub const NULL: Self = Self(0);
}

// SAFETY: a `u64` address, which is exactly how the driver passes a pointer parameter.
unsafe impl DeviceRepr for DevPtr {}

/// The kind of one kernel parameter, as the signature check compares it with the PTX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// A pointer (8 bytes).
    Ptr,
    /// `int` (4 bytes).
    I32,
    /// `long long` (8 bytes).
    I64,
    /// `float` (4 bytes).
    F32,
}

impl ArgKind {
    /// The name the signature listing uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ptr => "ptr",
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::F32 => "f32",
        }
    }
}

/// A type a kernel parameter can have.
pub trait KernelArg: DeviceRepr {
    /// Its kind.
    const KIND: ArgKind;
}

impl KernelArg for DevPtr {
    const KIND: ArgKind = ArgKind::Ptr;
}

impl KernelArg for i32 {
    const KIND: ArgKind = ArgKind::I32;
}

impl KernelArg for i64 {
    const KIND: ArgKind = ArgKind::I64;
}

impl KernelArg for f32 {
    const KIND: ArgKind = ArgKind::F32;
}

/// The whole argument list of one kernel.
pub trait KernelArgs {
    /// Parameter kinds, in order.
    const KINDS: &'static [ArgKind];
    /// Pushes every field, in order, onto a launch.
    fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>);
}

/// Declares argument structs: named fields in parameter order, each a [`KernelArg`].
macro_rules! kernel_args {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident { $( $(#[doc = $field_doc:literal])* $field:ident : $ty:ty ),* $(,)? }
    )*) => {$(
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name { $( $(#[doc = $field_doc])* pub $field: $ty, )* }

        impl KernelArgs for $name {
            const KINDS: &'static [ArgKind] = &[ $( <$ty as KernelArg>::KIND ),* ];
            fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>) {
                $( launch.arg(&self.$field); )*
            }
        }
    )*};
}

kernel_args! {
    /// `ember_gather_rows_*` (`gather.cu`).
    GatherRowsArgs {
        /// `[num_rows, cols]`.
        out: DevPtr,
        /// `[table_rows, cols]`.
        table: DevPtr,
        /// `[num_rows]` u32 row ids.
        ids: DevPtr,
        /// Rows to gather.
        num_rows: i32,
        /// Columns per row.
        cols: i32,
        /// Rows of `table`; larger ids give zeros.
        table_rows: i32,
    }

    /// `ember_lora_shrink_gemv_*` (`lora.cu`); planned by [`crate::lora_plan`].
    LoraShrinkGemvArgs {
        /// `[num_tokens, max_rank]` f32.
        buf: DevPtr,
        /// `[num_tokens, in_features]`.
        x: DevPtr,
        /// `[num_slots, max_rank, in_features]`.
        a: DevPtr,
        /// `[num_tokens]` i32 slots, -1 for the base model.
        token_slots: DevPtr,
        /// Input width.
        in_features: i32,
        /// Padded rank of the slots.
        max_rank: i32,
    }

    /// `ember_lora_shrink_segments_*` (`lora.cu`).
    LoraShrinkSegmentsArgs {
        /// `[num_tokens, max_rank]` f32.
        buf: DevPtr,
        /// `[num_tokens, in_features]`.
        x: DevPtr,
        /// `[num_slots, max_rank, in_features]`.
        a: DevPtr,
        /// `[num_segments + 1]` i32 row offsets.
        seg_starts: DevPtr,
        /// `[num_segments]` i32 slots, -1 for base-model runs.
        seg_slots: DevPtr,
        /// Input width.
        in_features: i32,
        /// Padded rank of the slots (at most 64).
        max_rank: i32,
    }

    /// `ember_lora_expand_*` (`lora.cu`).
    LoraExpandArgs {
        /// `[num_tokens, out_features]`, updated in place.
        y: DevPtr,
        /// `[num_tokens, max_rank]` f32.
        buf: DevPtr,
        /// `[num_slots, out_features, max_rank]`.
        b: DevPtr,
        /// `[num_slots]` f32 adapter scales.
        scales: DevPtr,
        /// `[num_tokens]` i32 slots, -1 for the base model.
        token_slots: DevPtr,
        /// Rows.
        num_tokens: i32,
        /// Output width.
        out_features: i32,
        /// Padded rank of the slots.
        max_rank: i32,
    }

    /// `ember_add_rms_norm_*` (`norm.cu`).
    AddRmsNormArgs {
        /// `[rows, cols]`.
        out: DevPtr,
        /// `[rows, cols]`, updated to `residual + x`.
        residual: DevPtr,
        /// `[rows, cols]`, or null for a plain norm of `residual`.
        x: DevPtr,
        /// `[cols]` f32.
        weight: DevPtr,
        /// Columns per row.
        cols: i32,
        /// Epsilon inside the square root.
        eps: f32,
    }

    /// `ember_add_*` (`activation.cu`): `x += y + bias`.
    AddArgs {
        /// `[rows, cols]`, in place.
        x: DevPtr,
        /// `[rows, cols]`, or null.
        y: DevPtr,
        /// `[cols]` f32, or null.
        bias: DevPtr,
        /// `rows * cols`.
        n: i64,
        /// Columns per row (the bias period).
        cols: i32,
    }

    /// `ember_silu_mul_*` (`activation.cu`).
    SiluMulArgs {
        /// `[n]`.
        out: DevPtr,
        /// `[n]`.
        gate: DevPtr,
        /// `[n]`.
        up: DevPtr,
        /// Elements.
        n: i64,
    }

    /// `ember_to_f32_*` (`activation.cu`).
    ToF32Args {
        /// `[n]` f32.
        out: DevPtr,
        /// `[n]`.
        x: DevPtr,
        /// Elements.
        n: i64,
    }

    /// `ember_rope_*` (`rope.cu`).
    RopeArgs {
        /// `[num_tokens, num_heads * head_dim]`, in place.
        x: DevPtr,
        /// `[num_tokens]` u32.
        positions: DevPtr,
        /// `[rotary_dim / 2]` f32.
        inv_freq: DevPtr,
        /// Heads per row.
        num_heads: i32,
        /// Dimensions per head.
        head_dim: i32,
        /// Rotated dimensions per head.
        rotary_dim: i32,
        /// 1: pairs `(2i, 2i + 1)`; 0: pairs `(i, i + rotary_dim / 2)`.
        interleaved: i32,
    }

    /// `ember_reshape_and_cache_*` (`kv_cache.cu`).
    ReshapeAndCacheArgs {
        /// `[num_slots, width]`.
        k_cache: DevPtr,
        /// `[num_slots, width]`.
        v_cache: DevPtr,
        /// `[num_tokens, width]`.
        key: DevPtr,
        /// `[num_tokens, width]`.
        value: DevPtr,
        /// `[num_tokens]` i32; -1 skips the row.
        slot_mapping: DevPtr,
        /// `num_kv_heads * head_dim`.
        width: i32,
        /// Slots in the cache.
        num_slots: i64,
    }

    /// `ember_paged_decode_attention_*_h*_b*` (`decode_attention.cu`).
    PagedDecodeAttentionArgs {
        /// `[num_seqs, num_heads, head_dim]`.
        out: DevPtr,
        /// `[num_seqs, num_heads, num_splits, head_dim]` f32.
        partial_acc: DevPtr,
        /// `[num_seqs, num_heads, num_splits]` f32.
        partial_max: DevPtr,
        /// `[num_seqs, num_heads, num_splits]` f32.
        partial_sum: DevPtr,
        /// `[num_seqs, num_heads, head_dim]`.
        q: DevPtr,
        /// `[num_blocks, block_size, num_kv_heads, head_dim]`.
        k_cache: DevPtr,
        /// `[num_blocks, block_size, num_kv_heads, head_dim]`.
        v_cache: DevPtr,
        /// `[num_seqs, max_blocks_per_seq]` i32.
        block_tables: DevPtr,
        /// `[num_seqs]` i32.
        seq_lens: DevPtr,
        /// Row stride of `block_tables`.
        max_blocks_per_seq: i32,
        /// Query heads.
        num_heads: i32,
        /// Key/value heads.
        num_kv_heads: i32,
        /// Score scale.
        scale: f32,
        /// Context tokens per split.
        partition_size: i32,
        /// Splits per sequence.
        num_splits: i32,
    }

    /// `ember_paged_decode_reduce_*` (`decode_attention.cu`).
    PagedDecodeReduceArgs {
        /// `[num_seqs, num_heads, head_dim]`.
        out: DevPtr,
        /// `[num_seqs, num_heads, num_splits, head_dim]` f32.
        partial_acc: DevPtr,
        /// `[num_seqs, num_heads, num_splits]` f32.
        partial_max: DevPtr,
        /// `[num_seqs, num_heads, num_splits]` f32.
        partial_sum: DevPtr,
        /// `[num_seqs]` i32.
        seq_lens: DevPtr,
        /// Query heads.
        num_heads: i32,
        /// Dimensions per head.
        head_dim: i32,
        /// Context tokens per split.
        partition_size: i32,
        /// Splits per sequence.
        num_splits: i32,
    }

    /// `ember_prefill_attention_*_h*_b*` (`prefill_attention.cu`).
    PrefillAttentionArgs {
        /// `[num_tokens, num_heads, head_dim]`.
        out: DevPtr,
        /// `[num_tokens, num_heads, head_dim]`.
        q: DevPtr,
        /// `[num_blocks, block_size, num_kv_heads, head_dim]`.
        k_cache: DevPtr,
        /// `[num_blocks, block_size, num_kv_heads, head_dim]`.
        v_cache: DevPtr,
        /// `[num_seqs, max_blocks_per_seq]` i32.
        block_tables: DevPtr,
        /// `[num_seqs]` i32.
        seq_lens: DevPtr,
        /// `[num_seqs + 1]` i32.
        query_start_loc: DevPtr,
        /// Row stride of `block_tables`.
        max_blocks_per_seq: i32,
        /// Query heads.
        num_heads: i32,
        /// Key/value heads.
        num_kv_heads: i32,
        /// Score scale.
        scale: f32,
        /// 64-row query tiles per sequence (grid x is `num_seqs * q_tiles_per_seq`).
        q_tiles_per_seq: i32,
    }

    /// `ember_sample_f32` (`sampling.cu`).
    SampleArgs {
        /// `[rows]` i32 token ids.
        out_ids: DevPtr,
        /// `[rows, vocab]` f32.
        logits: DevPtr,
        /// `[rows]` `struct SampleParams` (see `sampling.rs`).
        params: DevPtr,
        /// Logits per row.
        vocab: i32,
    }

    /// `ember_dequant_*` (`dequant.cu`).
    DequantArgs {
        /// `[num_blocks * 32]` bf16.
        out: DevPtr,
        /// The GGUF blocks of `num_blocks * 32` elements.
        src: DevPtr,
        /// 32-element output chunks, one thread each (a K-quant super-block is 8 chunks).
        num_blocks: i64,
        /// Format: 0 = Q8_0, 1 = Q4_0, 2 = Q4_1, 3 = Q5_0, 4 = Q5_1, 5 = IQ4_NL, 6 = Q2_K,
        /// 7 = Q3_K, 8 = Q4_K, 9 = Q5_K, 10 = Q6_K, 11 = Q8_K (`weights::dequant_kind`).
        kind: i32,
    }
}
