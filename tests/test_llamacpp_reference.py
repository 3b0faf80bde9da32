"""The default model (SmolLM2 Q4_1 GGUF) against independent references on the same file.

Ember has two CPU arithmetic modes:

- dtype="float32" dequantizes the weights at load and keeps every product in f32, as
  transformers' GGUF loader does. It is an exact path: logits within float32 rounding of
  transformers' and identical greedy tokens.
- dtype="auto" (the default) keeps Q4_1/Q8_0 weights quantized and quantizes each activation
  row to 8 bits per 32-element block before integer dot products. It is a quantized path,
  judged as llama.cpp's is: by teacher-forced KL divergence and top-1 agreement against the
  float32 reference (transformers), beside llama.cpp's own figures on the same file.

Ember's default path does not reproduce llama.cpp's arithmetic: measured on NATURAL_TEXT
(2026-11-30), its logits are no closer to llama.cpp's (mean KL 0.0035, top-1 0.965) than
float32's are (KL 0.0029, top-1 0.968), so no test here claims it. Greedy continuations
compared with llama.cpp's are not a test either: float32 and the default path pass or fail
them alike, as near-tied candidates flip either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ember import Engine, SamplingParams

from references import require

TOKENIZER_TEXTS = [
    "Hello world",
    "naïve café, déjà vu, Ångström, façade",
    "emoji 🎉🔥👩‍👩‍👧 and symbols ∑ ≤ → ©",
    "中文测试，日本語のテキスト、한국어 문장",
    "def f(x):\n\treturn x ** 2  # square\n",
    "many     spaces    and\n\n\nnewlines   ",
    "Windows\r\nline\r\nendings\r\n",
    "numbers 1234567890 3.14159 1e-10 007",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces and trailing ones   ",
    "MiXeD CaSe, punctuation!!! ...? (parens) [brackets] {braces}",
    "",
]

GREEDY_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Python is a programming language that",
    "The largest planet in the solar system is",
    "Photosynthesis is the process by which",
    "<|im_start|>user\nName three fruits.<|im_end|>\n<|im_start|>assistant\n",
    "import numpy as np\n\n# compute the mean of",
    "In 1969, the first humans",
]
NUM_GREEDY_TOKENS = 16

NATURAL_TEXT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe "
    "experimented with two-wheeled machines that riders pushed along with their feet. These early "
    "designs had no pedals, and they were heavy, uncomfortable and difficult to steer. Over the "
    "following decades, engineers added cranks and pedals to the front wheel, which made the machine "
    "faster but also more dangerous, because the front wheel grew larger and larger to increase speed. "
    "The so-called safety bicycle, introduced in the 1880s, solved this problem with two wheels of "
    "equal size and a chain that drove the rear wheel. Pneumatic tires, invented soon afterwards, "
    "made riding far more comfortable, and the bicycle quickly became popular with workers, students "
    "and women, for whom it offered a new kind of independence. Today, bicycles are used all over the "
    "world for transport, exercise and sport. Cities build dedicated lanes to make cycling safer, and "
    "electric motors help riders climb hills and travel longer distances. Researchers continue to "
    "study the physics of balance and steering, which turn out to be surprisingly subtle: a moving "
    "bicycle stays upright mostly because the rider steers into the direction of a fall, while the "
    "geometry of the front fork helps the wheel turn by itself. "
    "Bread is one of the oldest prepared foods. Its basic recipe has hardly changed in thousands of "
    "years: flour, water, salt and a leavening agent such as yeast. When the dough is kneaded, proteins "
    "in the flour form a network called gluten, which traps the gas produced by the yeast and lets the "
    "loaf rise. Baking then sets this structure and browns the crust, creating hundreds of aroma "
    "compounds. Different regions developed their own traditions, from flat breads cooked on hot stones "
    "to dense rye loaves and light, crusty baguettes, and many families still bake bread at home."
)
MIN_TOP1_AGREEMENT_TRANSFORMERS = 0.98
MAX_LOGITS_REL_ERROR_TRANSFORMERS = 1e-3
# Default path vs float32, measured 2026-11-30 beside llama.cpp vs float32 on NATURAL_TEXT:
# mean KL 0.00275 vs 0.00285, top-1 agreement 0.9648 vs 0.9675.
MAX_KL_RATIO_TO_LLAMA_CPP = 1.25
MAX_TOP1_SHORTFALL_TO_LLAMA_CPP = 0.01
# A default path that silently computed in float32 would have KL ~1e-9: it must show the
# quantization (at least a tenth of llama.cpp's KL).
MIN_KL_RATIO_TO_LLAMA_CPP = 0.1


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    """The llama_cpp module (llama-cpp-python, which builds llama.cpp from source)."""
    return require("llama_cpp")


def test_tokenization_equals_llama_cpp(engine: Engine, default_gguf: Path, llama_cpp: Any) -> None:
    vocab = llama_cpp.Llama(str(default_gguf), vocab_only=True, verbose=False)
    mismatches = []
    for text in TOKENIZER_TEXTS:
        expected = vocab.tokenize(text.encode(), add_bos=False, special=True)
        ours = engine.tokenizer.encode(text, add_special_tokens=False)
        if ours != expected:
            mismatches.append((text, ours, expected))
    assert not mismatches, "\n".join(f"{t!r}: ours {o} llama.cpp {e}" for t, o, e in mismatches)


@pytest.fixture(scope="module")
def float32_engine(default_gguf: Path) -> Engine:
    """The default model in dtype="float32": weights dequantized at load, f32 throughout."""
    return Engine(str(default_gguf), dtype="float32", kv_cache_memory_bytes=64 << 20, max_model_len=1024)


@pytest.fixture(scope="module")
def transformers_model(default_gguf: Path) -> Any:
    """transformers' GGUF loader on the same file (weights dequantized to float32)."""
    torch = require("torch")
    transformers = require("transformers")
    require("gguf")
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(default_gguf.parent), gguf_file=default_gguf.name, dtype=torch.float32
    ).eval()


def test_float32_mode_logits_match_transformers(float32_engine: Engine, transformers_model: Any) -> None:
    torch = require("torch")
    ids = float32_engine.tokenizer.encode(NATURAL_TEXT, add_special_tokens=True)
    assert len(ids) >= 200
    ours = torch.tensor(float32_engine.score(ids))
    with torch.no_grad():
        ref = transformers_model(torch.tensor([ids])).logits[0]
    rel_error = ((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    agreement = (ours.argmax(dim=-1) == ref.argmax(dim=-1)).float().mean().item()
    print(f"float32 mode vs transformers: max relative logits error {rel_error:.2e}, top-1 agreement {agreement:.4f}")
    assert rel_error < MAX_LOGITS_REL_ERROR_TRANSFORMERS
    assert agreement >= MIN_TOP1_AGREEMENT_TRANSFORMERS


def test_float32_mode_greedy_matches_transformers(float32_engine: Engine, transformers_model: Any) -> None:
    torch = require("torch")
    prompt_ids = [float32_engine.tokenizer.encode(p, add_special_tokens=True) for p in GREEDY_PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=NUM_GREEDY_TOKENS, ignore_eos=True)
    ours = [o.outputs[0].token_ids for o in float32_engine.generate(prompt_ids, params, use_tqdm=False)]
    mismatches = []
    for prompt, ids, our_tokens in zip(GREEDY_PROMPTS, prompt_ids, ours, strict=True):
        # Plain argmax steps (like ignore_eos=True); `generate(min_new_tokens=...)` would mask EOS instead.
        expected: list[int] = []
        with torch.no_grad():
            for _ in range(NUM_GREEDY_TOKENS):
                logits = transformers_model(torch.tensor([ids + expected])).logits[0, -1]
                expected.append(int(logits.argmax()))
        if our_tokens != expected:
            mismatches.append((prompt, our_tokens, expected))
    assert not mismatches, "\n".join(f"{p!r}: ours {o} transformers {e}" for p, o, e in mismatches)


def _log_softmax(np: Any, logits: Any) -> Any:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _kl_and_top1(np: Any, reference: Any, logits: Any) -> tuple[float, float]:
    """Mean KL(reference || logits) over positions and top-1 agreement with the reference."""
    ref_lp, lp = _log_softmax(np, reference), _log_softmax(np, logits)
    kl = (np.exp(ref_lp) * (ref_lp - lp)).sum(axis=-1)
    return float(kl.mean()), float((reference.argmax(axis=-1) == logits.argmax(axis=-1)).mean())


def test_default_mode_is_as_faithful_to_float32_as_llama_cpp(
    engine: Engine, transformers_model: Any, default_gguf: Path, llama_cpp: Any
) -> None:
    np = require("numpy")
    torch = require("torch")
    ids = engine.tokenizer.encode(NATURAL_TEXT, add_special_tokens=True)
    with torch.no_grad():
        float32 = transformers_model(torch.tensor([ids])).logits[0].double().numpy()
    ours = np.asarray(engine.score(ids), dtype=np.float64)
    llm = llama_cpp.Llama(str(default_gguf), n_ctx=1024, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    kl_ours, top1_ours = _kl_and_top1(np, float32, ours)
    kl_theirs, top1_theirs = _kl_and_top1(np, float32, theirs)
    print(f"teacher-forced vs float32 over {len(ids)} positions: Ember default KL {kl_ours:.5f} top-1 "
          f"{top1_ours:.4f}; llama.cpp KL {kl_theirs:.5f} top-1 {top1_theirs:.4f}")  # fmt: skip
    assert kl_ours <= MAX_KL_RATIO_TO_LLAMA_CPP * kl_theirs
    assert top1_ours >= top1_theirs - MAX_TOP1_SHORTFALL_TO_LLAMA_CPP
    assert kl_ours >= MIN_KL_RATIO_TO_LLAMA_CPP * kl_theirs, "the default path computed no quantization"
