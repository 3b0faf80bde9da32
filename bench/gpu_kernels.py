"""GPU kernel benchmark (run on the GPU machine; seeded).

Decode attention: achieved bandwidth (K/V bytes read per second) as a fraction of the measured
device-to-device copy bandwidth. Prefill attention: causal TFLOP/s beside PyTorch's
scaled_dot_product_attention with the flash backend, in the same run. Our kernels are driven
through CuPy's RawModule on the fatbin that build.rs embeds (EMBER_FATBIN or --fatbin), like
tests/gpu. Prints a table and writes a JSON record.

    python bench/gpu_kernels.py --fatbin target/.../ember_kernels.fatbin [--quick] [--out DIR]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from _common import common_parser, write_record

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16  # Llama-3-8B attention
DECODE_CASES = [(1, 4096), (1, 16384), (16, 4096), (64, 2048), (256, 1024)]  # (batch, context)
PREFILL_CASES = [(8, 512), (4, 2048), (1, 8192)]  # (sequences, prompt length)


def timed(cp, fn, iters: int) -> float:
    """Mean seconds per call of `fn` over `iters` calls after two warm-ups (CUDA events)."""
    for _ in range(2):
        fn()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / 1e3 / iters


def copy_bandwidth(cp, iters: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write of a 1 GiB buffer)."""
    src = cp.ones(1 << 29, dtype=cp.uint16)
    dst = cp.empty_like(src)
    seconds = timed(cp, lambda: cp.copyto(dst, src), iters)
    return 2 * src.nbytes / seconds


def decode_split(context: int, batch: int, num_sms: int) -> tuple[int, int]:
    """(partition, splits) as crates/ember-cuda/src/launch.rs::decode_split chooses them."""
    base = batch * KV_HEADS * -(-(HEADS // KV_HEADS) // 8)
    for partition in (512, 256, 128):
        splits = max(1, -(-context // partition))
        if base * splits >= num_sms:
            return partition, splits
    return 128, max(1, -(-context // 128))


def paged_cache(cp, rng, num_seqs: int, context: int):
    """Random bf16 K/V caches and block tables (blocks shuffled) for `num_seqs` sequences."""
    blocks_per_seq = -(-context // BLOCK)
    num_blocks = num_seqs * blocks_per_seq
    shape = (num_blocks, BLOCK, KV_HEADS, HEAD_DIM)
    kc = cp.asarray(rng.integers(0x3C00, 0x3F80, size=shape, dtype=np.uint16))
    vc = cp.asarray(rng.integers(0x3C00, 0x3F80, size=shape, dtype=np.uint16))
    tables = cp.asarray(rng.permutation(num_blocks).astype(np.int32).reshape(num_seqs, blocks_per_seq))
    lens = cp.full((num_seqs,), context, dtype=cp.int32)
    return kc, vc, tables, lens, blocks_per_seq


def bench_decode(cp, module, rng, bandwidth: float, num_sms: int, iters: int) -> list[dict]:
    rows = []
    kern = module.get_function(f"ember_paged_decode_attention_bf16_h{HEAD_DIM}_b{BLOCK}")
    reduce = module.get_function("ember_paged_decode_reduce_bf16")
    for batch, context in DECODE_CASES:
        kc, vc, tables, lens, mbps = paged_cache(cp, rng, batch, context)
        partition, splits = decode_split(context, batch, num_sms)
        q = cp.asarray(rng.integers(0x3C00, 0x3F80, size=(batch, HEADS, HEAD_DIM), dtype=np.uint16))
        out = cp.empty_like(q)
        acc = cp.empty((batch, HEADS, splits, HEAD_DIM), cp.float32)
        mx = cp.empty((batch, HEADS, splits), cp.float32)
        sm = cp.empty_like(mx)
        grid = (KV_HEADS * -(-(HEADS // KV_HEADS) // 8), batch, splits)
        args = (out, acc, mx, sm, q, kc, vc, tables, lens, np.int32(mbps), np.int32(HEADS), np.int32(KV_HEADS))
        tail = (np.float32(HEAD_DIM**-0.5), np.int32(partition), np.int32(splits))

        def run(args=args, tail=tail, grid=grid, splits=splits, out=out, acc=acc, mx=mx, sm=sm, lens=lens):
            kern(grid, (128,), args + tail)
            if splits > 1:
                reduce(
                    (HEADS, grid[1]),
                    (HEAD_DIM,),
                    (out, acc, mx, sm, lens, np.int32(HEADS), np.int32(HEAD_DIM), tail[1], tail[2]),
                )

        seconds = timed(cp, run, iters)
        kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * 2
        rows.append(
            {
                "batch": batch,
                "context": context,
                "splits": splits,
                "us": seconds * 1e6,
                "gb_per_s": kv_bytes / seconds / 1e9,
                "fraction_of_copy": kv_bytes / seconds / bandwidth,
            }
        )
    return rows


def bench_prefill(cp, module, rng, iters: int) -> list[dict]:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    kern = module.get_function(f"ember_prefill_attention_bf16_h{HEAD_DIM}_b{BLOCK}")
    for seqs, length in PREFILL_CASES:
        kc, vc, tables, lens, mbps = paged_cache(cp, rng, seqs, length)
        tokens = seqs * length
        q = cp.asarray(rng.integers(0x3C00, 0x3F80, size=(tokens, HEADS, HEAD_DIM), dtype=np.uint16))
        out = cp.empty_like(q)
        qsl = cp.arange(0, tokens + 1, length, dtype=cp.int32)
        tiles = -(-length // 64)
        args = (out, q, kc, vc, tables, lens, qsl, np.int32(mbps), np.int32(HEADS), np.int32(KV_HEADS))
        tail = (np.float32(HEAD_DIM**-0.5), np.int32(tiles))
        ours = timed(
            cp,
            lambda args=args, tail=tail, tiles=tiles, seqs=seqs: kern((seqs * tiles, HEADS), (128,), args + tail),
            iters,
        )
        gen = torch.Generator(device="cuda").manual_seed(0)
        tq = torch.randn(seqs, HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
        tk = torch.randn(seqs, HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
        tv = torch.randn_like(tk)

        def sdpa(tq=tq, tk=tk, tv=tv):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)

        theirs = timed(cp, sdpa, iters)
        flops = 4 * seqs * HEADS * HEAD_DIM * length * (length + 1) / 2
        rows.append(
            {
                "seqs": seqs,
                "length": length,
                "ours_tflops": flops / ours / 1e12,
                "torch_flash_tflops": flops / theirs / 1e12,
                "ratio": theirs / ours,
            }
        )
    return rows


def main() -> None:
    parser = common_parser(__doc__, "unused (GPU benchmark)", "fewer iterations")
    parser.add_argument("--fatbin", default=os.environ.get("EMBER_FATBIN"), help="ember_kernels.fatbin")
    args = parser.parse_args()
    if not args.fatbin:
        parser.error("--fatbin (or EMBER_FATBIN) is required")
    import cupy as cp
    import torch

    rng = np.random.default_rng(args.seed)
    module = cp.RawModule(path=str(Path(args.fatbin)))
    props = cp.cuda.runtime.getDeviceProperties(0)
    device, num_sms = props["name"].decode(), props["multiProcessorCount"]
    iters = 5 if args.quick else 50
    bandwidth = copy_bandwidth(cp, iters)
    decode = bench_decode(cp, module, rng, bandwidth, num_sms, iters)
    prefill = bench_prefill(cp, module, rng, iters)
    print(f"{device}: device-to-device copy {bandwidth / 1e9:.0f} GB/s")
    print(f"{'batch':>6} {'context':>8} {'splits':>6} {'us':>9} {'GB/s':>8} {'of copy':>8}")
    for r in decode:
        head = f"{r['batch']:>6} {r['context']:>8} {r['splits']:>6}"
        print(f"{head} {r['us']:>9.1f} {r['gb_per_s']:>8.0f} {r['fraction_of_copy']:>8.1%}")
    print(f"{'seqs':>6} {'length':>8} {'ours TF/s':>10} {'flash TF/s':>11} {'flash/ours':>10}")
    for r in prefill:
        head = f"{r['seqs']:>6} {r['length']:>8}"
        print(f"{head} {r['ours_tflops']:>10.1f} {r['torch_flash_tflops']:>11.1f} {r['ratio']:>10.2f}")
    fields = {"device": device, "copy_gb_per_s": bandwidth / 1e9, "decode": decode, "prefill": prefill}
    write_record(args.out, "gpu_kernels", fields, {"torch": torch.__version__, "cupy": cp.__version__})


if __name__ == "__main__":
    main()
