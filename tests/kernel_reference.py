"""Float64 numpy references for the CUDA kernel tests (tests/gpu), importable without a GPU.

- 16-bit storage: round-to-nearest-even encoding of bf16 / f16 / f32 and the decoding back.
- GGUF blocks: the exact ggml layouts of Q8_0, Q4_0 and Q4_1, random blocks, a dequantizer;
  random raw blocks of every other format the kernels read (their reference is the `gguf`
  package, or llama.cpp's own dequantizer for Q8_K).
- Sampling: the counter-based uniform draw of crates/ember-core/src/sampler.rs (splitmix64),
  the kept set of temperature / top-k / top-p / min-p as cuda/sampling.cu defines it, the
  inverse-CDF pick in token-id order, and a chi-square bound.

Only numpy: the CPU tests (tests/test_gguf_dequant_reference.py,
tests/test_kernel_reference_sampling.py) check these references themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------------
# 16-bit storage
# ---------------------------------------------------------------------------------------------

#: numpy type of the raw bits of each kernel element type.
BITS = {"bf16": np.uint16, "f16": np.uint16, "f32": np.uint32}
#: A quiet NaN of each type, as bits: the poison written into outputs before a launch.
NAN_BITS = {"bf16": 0x7FC0, "f16": 0x7E00, "f32": 0x7FC00000}
#: Spacing of the type just below 2.0 relative to 1.0, i.e. the largest relative gap between
#: neighbours (2 ** -(significand bits - 1)): bf16 has 8 significant bits, f16 11, f32 24.
ULP = {"bf16": 2.0**-7, "f16": 2.0**-10, "f32": 2.0**-23}


def encode(x: np.ndarray | float, name: str) -> np.ndarray:
    """The bits of `x` stored as `name` ("bf16", "f16", "f32"), rounded to nearest even."""
    x = np.asarray(x, np.float64)
    if name == "f32":
        return x.astype(np.float32).view(np.uint32)
    if name == "f16":
        return x.astype(np.float16).view(np.uint16)
    if name != "bf16":
        raise ValueError(name)
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def decode(bits: np.ndarray, name: str) -> np.ndarray:
    """The float64 values of raw `name` bits."""
    bits = np.asarray(bits)
    if name == "f32":
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)
    if name == "f16":
        return bits.astype(np.uint16).view(np.float16).astype(np.float64)
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def round_to(x: np.ndarray | float, name: str) -> np.ndarray:
    """`x` rounded to `name` (what a kernel reads when it gets `x` in that type), as float64."""
    return decode(encode(x, name), name)


# ---------------------------------------------------------------------------------------------
# GGUF blocks (ggml layouts, little-endian, unaligned)
# ---------------------------------------------------------------------------------------------

QK = 32
#: The `kind` argument of ember_dequant_T (cuda/dequant.cu).
KINDS = {
    "Q8_0": 0,
    "Q4_0": 1,
    "Q4_1": 2,
    "Q5_0": 3,
    "Q5_1": 4,
    "IQ4_NL": 5,
    "Q2_K": 6,
    "Q3_K": 7,
    "Q4_K": 8,
    "Q5_K": 9,
    "Q6_K": 10,
    "Q8_K": 11,
}
#: ggml type id, elements and bytes per block of every quantized format.
GGML_FORMATS = {
    "Q8_0": (8, 32, 34),
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "IQ4_NL": (20, 32, 18),
    "Q2_K": (10, 256, 84),
    "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
    "Q8_K": (15, 256, 292),
}
#: Byte offsets of each format's f16 scales (d, and m / dmin); Q8_K's scale is an f32 at 0.
SCALE_OFFSETS = {
    "Q8_0": (0,),
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "IQ4_NL": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
    "Q8_K": (0,),
}
#: Q8_0: f16 d, 32 x int8. Q4_0: f16 d, 16 bytes of nibbles. Q4_1: f16 d, f16 m, 16 bytes.
BLOCK_DTYPES = {
    "Q8_0": np.dtype([("d", "<f2"), ("qs", "i1", (QK,))]),
    "Q4_0": np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))]),
    "Q4_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (QK // 2,))]),
}
BLOCK_BYTES = {kind: dt.itemsize for kind, dt in BLOCK_DTYPES.items()}  # 34, 18, 20


def random_scales(num_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Block scales of either sign and mixed magnitudes, with block 0 at zero and, when there
    are enough blocks, an f16 subnormal (block 1) and a large one (block 2)."""
    d = rng.standard_normal(num_blocks) * 10.0 ** rng.uniform(-3, 0, num_blocks)
    d[0] = 0.0
    if num_blocks > 2:
        d[1], d[2] = 3.0e-6, -7.5
    return d


def random_blocks(kind: str, num_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """`num_blocks` random blocks of `kind` as raw bytes `[num_blocks, block_bytes]` (uint8).

    Scales are random f16 of either sign and mixed magnitudes, with block 0 at d = 0 and, when
    there are enough blocks, an f16 subnormal scale (block 1) and a large one (block 2); the
    quants cover their whole range (Q8_0 includes -128, which ggml's quantizer never writes
    but the format defines)."""
    blocks = np.zeros(num_blocks, BLOCK_DTYPES[kind])
    blocks["d"] = random_scales(num_blocks, rng).astype(np.float16)
    if kind == "Q8_0":
        blocks["qs"] = rng.integers(-128, 128, (num_blocks, QK), dtype=np.int8)
    else:
        blocks["qs"] = rng.integers(0, 256, (num_blocks, QK // 2), dtype=np.uint8)
    if kind == "Q4_1":
        blocks["m"] = (rng.standard_normal(num_blocks) * 0.1).astype(np.float16)
    return blocks.view(np.uint8).reshape(num_blocks, BLOCK_BYTES[kind])


def random_raw_blocks(kind: str, num_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """`num_blocks` blocks of any format as raw bytes `[num_blocks, block_bytes]` (uint8): every
    quant, scale and min byte random, the f16 (Q8_K: f32) block scales from `random_scales`."""
    _, _, size = GGML_FORMATS[kind]
    data = rng.integers(0, 256, (num_blocks, size), dtype=np.uint8)
    for off in SCALE_OFFSETS[kind]:
        d = random_scales(num_blocks, rng)
        if kind == "Q8_K":
            data[:, off : off + 4] = d.astype("<f4").view(np.uint8).reshape(num_blocks, 4)
        else:
            data[:, off : off + 2] = d.astype("<f2").view(np.uint8).reshape(num_blocks, 2)
    return data


def dequantize(kind: str, data: np.ndarray) -> np.ndarray:
    """Float64 values of GGUF blocks given as raw bytes (`[..., k * block_bytes]` uint8): a flat
    array of `k * 32` values per leading index, in ggml's element order.

    Q8_0: x = d * q. Q4_0: x = d * (q - 8), Q4_1: x = d * q + m, where element j < 16 is the low
    nibble of byte j and element j + 16 its high nibble."""
    data = np.ascontiguousarray(data, np.uint8)
    blocks = data.reshape(-1, BLOCK_BYTES[kind]).view(BLOCK_DTYPES[kind]).reshape(-1)
    d = blocks["d"].astype(np.float64)[:, None]
    if kind == "Q8_0":
        x = d * blocks["qs"].astype(np.float64)
    else:
        qs = blocks["qs"]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)
        x = d * (q - 8.0) if kind == "Q4_0" else d * q + blocks["m"].astype(np.float64)[:, None]
    return x.reshape(*data.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer over uint64 arrays (wrapping arithmetic), as in sampler.rs."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _M64


def uniform(seed: np.ndarray, token_index: np.ndarray) -> np.ndarray:
    """The draw in [0, 1) of output token `token_index` of stream `seed` (bit-identical to
    `ember_core::sampler::uniform` and to `ember_uniform` in cuda/sampling.cu)."""
    seed = np.atleast_1d(np.asarray(seed, np.uint64))
    token_index = np.atleast_1d(np.asarray(token_index, np.uint64))
    bits = splitmix64(splitmix64(seed) ^ splitmix64(token_index ^ np.uint64(0xD1B54A32D192ED03)))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


#: numpy twin of `struct SampleParams` (cuda/sampling.cu, `#[repr(C)]` in sampling.rs): 32 bytes.
SAMPLE_PARAMS = np.dtype(
    [
        ("temperature", "<f4"),
        ("top_p", "<f4"),
        ("min_p", "<f4"),
        ("top_k", "<i4"),
        ("seed", "<u8"),
        ("token_index", "<u8"),
    ]
)
assert SAMPLE_PARAMS.itemsize == 32


@dataclass(frozen=True)
class Params:
    """One row's sampling parameters (the values are rounded to f32 like the kernel's)."""

    temperature: float
    top_p: float = 1.0
    min_p: float = 0.0
    top_k: int = 0
    seed: int = 0
    token_index: int = 0


def pack_params(rows: list[Params]) -> np.ndarray:
    """The rows as a `SampleParams` array, viewed as uint32 words for the upload."""
    out = np.zeros(len(rows), SAMPLE_PARAMS)
    for i, p in enumerate(rows):
        out[i] = (p.temperature, p.top_p, p.min_p, p.top_k, p.seed, p.token_index)
    return out.view(np.uint32)


def clean_logits(logits: np.ndarray) -> np.ndarray:
    """Float64 logits with NaN as -inf (the kernels' convention)."""
    x = np.asarray(logits, np.float64).copy()
    x[np.isnan(x)] = -np.inf
    return x


def is_greedy(p: Params, logits: np.ndarray) -> bool:
    """Whether the kernel takes the argmax: temperature <= 0, or no finite maximum."""
    m = clean_logits(logits).max()
    return float(np.float32(p.temperature)) <= 0.0 or not np.isfinite(m)


def weights(logits: np.ndarray, p: Params) -> np.ndarray:
    """w = exp((l - max) / T) in float64 (1 at the maximum, 0 for -inf/NaN logits)."""
    x = clean_logits(logits)
    inv_t = float(np.float32(1.0) / np.float32(p.temperature))
    return np.exp((x - x.max()) * inv_t)


def kept_mask(w: np.ndarray, p: Params, slack: float = 0.0, floor: float = 0.0) -> np.ndarray:
    """Tokens kept by cuda/sampling.cu's filters, as a boolean mask over the weights `w`.

    The kernel keeps w >= threshold, threshold the largest of: min_p; the k-th largest weight
    (top-k, ties kept); and the weight of the smallest best-first prefix of what min-p and top-k
    kept whose mass reaches top_p times that kept mass (top-p, ties kept). `slack` > 0 widens
    every comparison by that relative amount (the loose set: anything the kernel's f32 exp and
    sums may legitimately include), `slack` < 0 narrows it; `floor` lowers the threshold by an
    absolute amount (the kernel's bisections on [0, 1] stop at a 2^-32 resolution)."""
    vocab = w.size
    # Weight thresholds move only down (loose set): the token at a top-k or top-p cut is always
    # kept, as the kernel's bisections keep `lo` at or below it; min-p and the top-p target move
    # both ways.
    widen = 1.0 - max(slack, 0.0)
    threshold = float(np.float32(p.min_p)) * (1.0 - slack) if p.min_p > 0 else 0.0
    if 0 < p.top_k < vocab:
        kth = np.partition(w, vocab - p.top_k)[vocab - p.top_k]
        threshold = max(threshold, kth * widen)
    if float(np.float32(p.top_p)) < 1.0:
        kept = np.sort(w[w >= threshold])[::-1]
        target = float(np.float32(p.top_p)) * kept.sum() * (1.0 + slack)
        cum = np.cumsum(kept)
        j = min(int(np.searchsorted(cum, target, side="left")), kept.size - 1)
        threshold = max(threshold, kept[j] * widen)
    # Every threshold is at most the top weight (1): the best token is always kept.
    return w >= min(threshold, w.max()) - floor


def probabilities(logits: np.ndarray, p: Params) -> np.ndarray:
    """The reference distribution over the vocabulary (float64), greedy rows included."""
    x = clean_logits(logits)
    if is_greedy(p, logits):
        out = np.zeros(x.size)
        out[int(np.argmax(x))] = 1.0
        return out
    w = weights(logits, p)
    w = np.where(kept_mask(w, p), w, 0.0)
    return w / w.sum()


def inverse_cdf(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """For each draw in `u`, the token whose id-ordered cumulative mass first exceeds
    `u * total` (the kernel's walk)."""
    cum = np.cumsum(probs)
    ids = np.searchsorted(cum, np.asarray(u, np.float64) * cum[-1], side="right")
    return np.minimum(ids, probs.size - 1)


def chi_square_critical(df: int, z: float = 3.719) -> float:
    """Upper quantile of chi-square with `df` degrees of freedom (Wilson-Hilferty); the default
    z = 3.719 is the one-sided 1e-4 point of the normal, so a correct sampler fails a given
    case with probability about 1e-4 (and the seeds are fixed, so never flakily)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def chi_square(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> tuple[float, int]:
    """(statistic, degrees of freedom) of observed `counts` against `probs`; cells expected
    fewer than `min_expected` times are pooled into one (merged into the smallest kept cell
    when the pool itself is too small)."""
    n = counts.sum()
    expected = probs * n
    big = expected >= min_expected
    obs = list(counts[big].astype(np.float64))
    exp = list(expected[big])
    rest_obs, rest_exp = float(counts[~big].sum()), float(expected[~big].sum())
    if rest_exp >= min_expected or (rest_exp > 0 and not exp):
        obs.append(rest_obs)
        exp.append(rest_exp)
    elif rest_exp > 0 or rest_obs > 0:
        k = int(np.argmin(exp))
        obs[k] += rest_obs
        exp[k] += rest_exp
    o, e = np.array(obs), np.array(exp)
    return float(((o - e) ** 2 / e).sum()), max(len(o) - 1, 1)


def peaked_logits(vocab: int, rng: np.random.Generator, head: int = 24) -> np.ndarray:
    """f32 logits with `head` tokens at random ids standing well clear of a low tail: the head
    logits are 7 + 0.25 * (0..head-1) shuffled (neighbouring weights differ by e^(0.25 / T)),
    the tail is N(-6, 1). Filters then cut between clearly separated weights, so the kept set
    does not depend on float rounding (checked by `unambiguous`)."""
    logits = rng.standard_normal(vocab) - 6.0
    ids = rng.choice(vocab, head, replace=False)
    logits[ids] = 7.0 + 0.25 * rng.permutation(head)
    return logits.astype(np.float32)


#: The distributions the GPU sampler is checked against with a chi-square test.
CHI_SQUARE_CASES = {
    "temperature": Params(1.0),
    "temperature_low": Params(0.5),
    "top_k": Params(0.8, top_k=10),
    "top_p": Params(1.0, top_p=0.9),
    "min_p": Params(1.5, min_p=0.1),
    "combined": Params(0.7, top_p=0.8, min_p=0.02, top_k=16),
}
#: Relative slack of the loose kept set (covers __expf, f32 temperatures and f32 sums).
SLACK = 1e-4
#: Absolute slack: the kernel's bisections on [0, 1] resolve weights to 2^-32.
FLOOR = 2.0**-31


def unambiguous(logits: np.ndarray, p: Params) -> bool:
    """Whether the loose and the tight kept sets agree (no token near a filter's cut)."""
    w = weights(logits, p)
    return bool(np.array_equal(kept_mask(w, p, SLACK, FLOOR), kept_mask(w, p, -SLACK)))


def draw_streams(p: Params, n: int, salt: int) -> list[Params]:
    """`n` copies of `p` with distinct seeds (full 64-bit range) and token indices (above 2^32
    for some, so both words of the u64 matter)."""
    rng = np.random.default_rng(salt)
    seeds = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    index = rng.integers(0, 2**40, n, dtype=np.int64)
    return [Params(p.temperature, p.top_p, p.min_p, p.top_k, int(s), int(t)) for s, t in zip(seeds, index, strict=True)]
