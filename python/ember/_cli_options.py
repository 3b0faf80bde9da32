"""Command-line options shared by `ember generate`, `ember chat` and `ember serve`."""

from __future__ import annotations

import argparse


def add_device_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--device, --gpu-memory-utilization, --dtype and --kv-cache-dtype: where the model runs and in
    which arithmetic."""
    parser.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        default="auto",
        help="where to run: auto uses a CUDA GPU when one is usable, else the CPU (default: auto)",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="fraction of GPU memory for weights, activations and the KV cache (default: 0.9)",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="arithmetic. CPU: auto keeps quantized weights quantized with 8-bit activations (fast, "
        "llama.cpp's scheme); float32 dequantizes weights at load and computes in f32 (exact, 4 bytes per weight). "
        "CUDA: auto or bfloat16 (bf16 weights and activations)",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "float32", "float16", "bfloat16", "int8"],
        default="auto",
        help="KV cache element type. CPU: auto is float16 (as accurate as float32 on long contexts, half "
        "the memory), or float32 with --dtype float32; float32, bfloat16 or int8 (8-bit integers with a "
        "scale per 32 elements, about a quarter of float32's memory) also work. CUDA: auto or bfloat16",
    )


def device_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The Engine keyword arguments those options set."""
    return {
        "device": args.device,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "dtype": args.dtype,
        "kv_cache_dtype": args.kv_cache_dtype,
    }
