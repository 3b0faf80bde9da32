"""`ember chat` and the chat path it drives, on general questions rather than one anecdote.

The CLI sends only the user's message unless `--system` is given, so the model's own chat
template supplies its default system prompt (as transformers and vLLM do). The default
(8-bit activation) arithmetic is judged beside float32 on the same questions: a 135M model
gets some of them wrong either way, so the check is that neither path breaks down and that
quantization costs at most a little against the exact arithmetic.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ember import Engine, SamplingParams
from ember.cli import main

QUESTIONS = [
    ("What is the capital of France?", r"\bParis\b"),
    ("What is the capital of Japan?", r"\bTokyo\b"),
    ("What is the capital of Italy?", r"\bRome\b"),
    ("What is the largest planet in the solar system?", r"\bJupiter\b"),
    ("How many days are in a week?", r"\b(seven|7)\b"),
    ("What color is the sky on a clear day?", r"\bblue\b"),
    ("Who wrote Romeo and Juliet?", r"\bShakespeare\b"),
    ("What is the chemical symbol for water?", r"\bH(2|₂)O\b"),
    ("How many legs does a spider have?", r"\b(eight|8)\b"),
    ("What is the freezing point of water in Celsius?", r"\b(0|zero)\b"),
    ("What gas do plants absorb from the air?", r"(carbon dioxide|\bCO2\b)"),
    ("What is 2 + 2?", r"\b(4|four)\b"),
]
ANSWER_TOKENS = 48
# Measured 2026-11-30 with the template's default system prompt: 8 of 12 in the default
# arithmetic and 8 of 12 in float32 (different questions missed). A broken template or
# arithmetic answers almost none.
MIN_CORRECT_FLOAT32 = 7
MAX_QUANTIZATION_LOSS = 2


def _num_correct(engine: Engine) -> tuple[int, list[str]]:
    """How many questions the greedy answer gets right (user message only), and the answers."""
    conversations = [[{"role": "user", "content": question}] for question, _ in QUESTIONS]
    params = SamplingParams(temperature=0.0, max_tokens=ANSWER_TOKENS)
    answers = [o.outputs[0].text for o in engine.chat(conversations, params, use_tqdm=False)]
    correct = sum(
        bool(re.search(pattern, a, re.IGNORECASE)) for (_, pattern), a in zip(QUESTIONS, answers, strict=True)
    )
    return correct, answers


def test_default_arithmetic_answers_as_well_as_float32(engine: Engine, default_gguf: Path) -> None:
    exact = Engine(str(default_gguf), dtype="float32", kv_cache_memory_bytes=16 << 20, max_model_len=512)
    num_default, default_answers = _num_correct(engine)
    num_float32, float32_answers = _num_correct(exact)
    print(f"correct answers of {len(QUESTIONS)}: default arithmetic {num_default}, float32 {num_float32}")
    assert num_float32 >= MIN_CORRECT_FLOAT32, float32_answers
    assert num_default >= num_float32 - MAX_QUANTIZATION_LOSS, (default_answers, float32_answers)


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_cli_chat_sends_the_message_and_only_the_system_prompt_asked_for(
    capsys: pytest.CaptureFixture[str], engine: Engine, default_gguf: Path, system: str | None
) -> None:
    question = QUESTIONS[1][0]
    argv = ["chat", question, "--model", str(default_gguf), "--max-tokens", "24"]
    status = main(argv + (["--system", system] if system else []))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "ember: loading" in captured.err
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    (expected,) = engine.chat(messages, SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False)
    assert captured.out == expected.outputs[0].text + "\n"
