"""Command-line options shared by `ember generate`, `ember chat` and `ember serve`."""

from __future__ import annotations

import argparse


def add_device_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--device, --gpu-memory-utilization and --dtype: where the model runs and in which arithmetic."""
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


def device_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The Engine keyword arguments those options set."""
    return {"device": args.device, "gpu_memory_utilization": args.gpu_memory_utilization, "dtype": args.dtype}
