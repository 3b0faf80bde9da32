"""Engine.generate and Engine.chat (priority=...): one int or one per prompt, validated before anything runs."""

from __future__ import annotations

import pytest

from ember import Engine, InvalidRequestError, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=4)
PROMPTS = ["The capital of France is", "Once upon a time"]


def test_priority_int_and_list_are_accepted(engine: Engine) -> None:
    plain = engine.generate(PROMPTS, GREEDY, use_tqdm=False)
    shared = engine.generate(PROMPTS, GREEDY, use_tqdm=False, priority=5)
    listed = engine.generate(PROMPTS, GREEDY, use_tqdm=False, priority=[1, -2])
    for a, b, c in zip(plain, shared, listed, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids == c.outputs[0].token_ids


@pytest.mark.parametrize("priority", [[0], [0, 1, 2], "1", [0, 1.5], [True, 0]])
def test_bad_priority_raises(engine: Engine, priority: object) -> None:
    with pytest.raises(InvalidRequestError, match="priority"):
        engine.generate(PROMPTS, GREEDY, use_tqdm=False, priority=priority)  # type: ignore[arg-type]
    assert engine.stats()["num_waiting"] == 0 and engine.stats()["num_running"] == 0


def test_chat_takes_priority_too(engine: Engine) -> None:
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    plain = engine.chat(conversations, GREEDY, use_tqdm=False)
    ranked = engine.chat(conversations, GREEDY, use_tqdm=False, priority=[3, -1])
    assert [o.outputs[0].token_ids for o in plain] == [o.outputs[0].token_ids for o in ranked]
    with pytest.raises(InvalidRequestError, match="priority"):
        engine.chat(conversations, GREEDY, use_tqdm=False, priority=[1])
