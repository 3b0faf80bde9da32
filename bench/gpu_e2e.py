"""End-to-end GPU benchmark on a Llama-3-8B-shaped bf16 model with random weights (run on the
GPU machine; seeded).

The weights are generated on the device with torch and written as a Hugging Face folder
(safetensors, config.json, a small byte-level tokenizer from tests/tiny_models.py). Measures:
single-stream decode tok/s (first to last streamed token) against the roofline (weight bytes
read per token / measured copy bandwidth), time to first token of a 200-token prompt, and
offline throughput on the same seeded prompts (200 tokens in, 180 out, EOS ignored) for Ember
and for Hugging Face transformers `generate` on the same weights in the same run. Ember runs
with prefix caching off, so no timed run reuses the warm-up's KV cache. Prints a table and
writes a JSON record.

    python bench/gpu_e2e.py [--quick] [--layers N] [--num-prompts N] [--out DIR]
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _common import common_parser, write_record

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}
INPUT_LEN, OUTPUT_LEN = 200, 180


def write_random_model(folder: Path, layers: int, seed: int) -> int:
    """Writes the model with weights drawn on the device (std 0.02, norms 1); returns the bytes
    of weights one decode token reads (every matrix but the embedding table)."""
    import torch
    from safetensors.torch import save_file

    from tiny_models import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(LLAMA3_8B, num_hidden_layers=layers)
    eos = write_tokenizer(folder)
    cfg.update(bos_token_id=eos, eos_token_id=eos)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape):
        return (torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02).cpu()

    tensors = {"model.embed_tokens.weight": rand(v, h), "lm_head.weight": rand(v, h)}
    tensors["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    for n in range(layers):
        p = f"model.layers.{n}."
        for name, shape in [
            ("self_attn.q_proj", (h, h)),
            ("self_attn.k_proj", (kv, h)),
            ("self_attn.v_proj", (kv, h)),
            ("self_attn.o_proj", (h, h)),
            ("mlp.gate_proj", (i, h)),
            ("mlp.up_proj", (i, h)),
            ("mlp.down_proj", (h, i)),
        ]:
            tensors[p + name + ".weight"] = rand(*shape)
        tensors[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    read = sum(t.numel() * 2 for name, t in tensors.items() if "embed_tokens" not in name)
    del tensors
    gc.collect()
    torch.cuda.empty_cache()
    return read


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write of a 1 GiB buffer)."""
    import torch

    src = torch.ones(1 << 29, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 2 * 20 / (time.perf_counter() - start)


def bench_ember(model: str, prompts: list[list[int]], decode_steps: int, output_len: int,
                device: str = "cuda") -> dict:  # fmt: skip
    """Ember's TTFT, single-stream decode and offline throughput on `prompts`, prefix caching off (so no
    timed run reuses KV of the warm-up or of an earlier run); returns the figures and the cache counters."""
    from ember import Engine, SamplingParams

    engine = Engine(model, device=device, max_model_len=1024, gpu_memory_utilization=0.85,
                    enable_prefix_caching=False)  # fmt: skip
    one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, detokenize=False)
    engine.generate(prompts[:1], one, use_tqdm=False)  # warm-up
    ttfts = []
    for p in prompts[1:6]:
        start = time.perf_counter()
        engine.generate([p], one, use_tqdm=False)
        ttfts.append(time.perf_counter() - start)
    # Decode rate from the stream's own token times, first to last: no prefill in it.
    long = SamplingParams(max_tokens=decode_steps, temperature=0.0, ignore_eos=True, detokenize=False)
    stamps = [time.perf_counter() for chunk in engine.generate_stream(prompts[0], long)
              for _ in chunk.outputs[0].token_ids]  # fmt: skip
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True, detokenize=False)
    start = time.perf_counter()
    outs = engine.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    stats = engine.stats()
    del engine
    gc.collect()
    return {
        "ttft_s": statistics.median(ttfts),
        "decode_tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "offline_s": seconds,
        "offline_out_tok_s": generated / seconds,
        "num_prompts": len(prompts),
        "num_generated_tokens": generated,
        "prefix_cache_hit_tokens": stats["prefix_cache_hits"],
    }


def bench_hf(folder: Path, prompts: list[list[int]], batch: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.bfloat16, device_map="cuda")
    model.eval()
    ids = torch.tensor(prompts, device="cuda")
    kwargs = {"max_new_tokens": OUTPUT_LEN, "min_new_tokens": OUTPUT_LEN, "do_sample": False, "eos_token_id": None}
    with torch.inference_mode():
        model.generate(ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=4, do_sample=False)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for b in range(0, len(prompts), batch):
            chunk = ids[b : b + batch]
            model.generate(chunk, attention_mask=torch.ones_like(chunk), pad_token_id=0, **kwargs)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return {"offline_s": seconds, "offline_out_tok_s": len(prompts) * OUTPUT_LEN / seconds, "num_prompts": len(prompts)}


def main() -> None:
    parser = common_parser(__doc__, "unused (GPU benchmark)", "4 layers, 100 prompts")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 32; 4 with --quick)")
    parser.add_argument("--num-prompts", type=int, default=None, help="offline prompts, both engines (default 1000)")
    parser.add_argument("--hf-batch", type=int, default=64, help="transformers batch size")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ember-gpu-e2e"), help="model folder")
    args = parser.parse_args()
    import torch

    layers = args.layers or (4 if args.quick else 32)
    num_prompts = args.num_prompts or (100 if args.quick else 1000)
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(300, 128000, size=(num_prompts, INPUT_LEN)).tolist()
    bytes_per_token = write_random_model(args.workdir, layers, args.seed)
    bandwidth = copy_bandwidth()
    roofline = bandwidth / bytes_per_token
    ember = bench_ember(str(args.workdir), prompts, 64 if args.quick else 256, OUTPUT_LEN)
    hf = bench_hf(args.workdir, prompts, args.hf_batch)
    device = torch.cuda.get_device_name(0)
    gb_token, copy_gb = bytes_per_token / 1e9, bandwidth / 1e9
    print(f"{device}: Llama-3-8B shape, {layers} layers, {gb_token:.2f} GB/token, copy {copy_gb:.0f} GB/s")
    tps = ember["decode_tok_s"]
    print(f"single-stream decode: {tps:.1f} tok/s, roofline {roofline:.1f} ({tps / roofline:.1%})")
    print(f"time to first token ({INPUT_LEN} tokens): {ember['ttft_s'] * 1e3:.1f} ms")
    print(
        f"offline, {num_prompts} prompts each: ember {ember['offline_out_tok_s']:.0f} out tok/s, "
        f"transformers {hf['offline_out_tok_s']:.0f} out tok/s (batch {args.hf_batch})"
    )
    fields = {
        "device": device,
        "layers": layers,
        "weight_bytes_per_token": bytes_per_token,
        "copy_gb_per_s": bandwidth / 1e9,
        "roofline_tok_s": roofline,
        "ember": ember,
        "transformers": hf,
        "num_prompts": num_prompts,
    }
    import transformers

    write_record(args.out, "gpu_e2e", fields, {"torch": torch.__version__, "transformers": transformers.__version__})


if __name__ == "__main__":
    main()
