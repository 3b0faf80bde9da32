"""Structured output through `ember.Engine`: property tests over random JSON schemas, regexes and choices on a
tiny random model (the constraint must hold whatever the logits say), at greedy and at temperature 1.0, and the
errors of constraints that cannot be enforced."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember import Engine, InvalidRequestError, SamplingParams, StructuredOutputsParams
from structured_strategies import CHOICES, json_schemas, max_bytes, regexes

PROMPTS = ["Answer:", "The data is", "x"]
MAX_TOKENS = 200
PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir: Path) -> Engine:
    return Engine(str(tiny_model_dir), kv_cache_memory_bytes=8 << 20)


def _run(engine: Engine, constraint: StructuredOutputsParams, seed: int) -> list[tuple[str, str | None]]:
    """(text, finish_reason) of every prompt at greedy and at temperature 1.0 (seeded), in one batch."""
    params = [
        SamplingParams(temperature=t, seed=seed, max_tokens=MAX_TOKENS, structured_outputs=constraint)
        for t in (0.0, 1.0)
    ]
    prompts = [p for p in PROMPTS for _ in params]
    outs = engine.generate(prompts, params * len(PROMPTS), use_tqdm=False)
    return [(o.outputs[0].text, o.outputs[0].finish_reason) for o in outs]


@PROPERTY_SETTINGS
@given(schema=json_schemas(), seed=st.integers(0, 2**32))
def test_json_schema_outputs_validate(tiny_engine: Engine, schema: dict, seed: int) -> None:
    bound = max_bytes(schema, schema.get("$defs", {}))
    results = _run(tiny_engine, StructuredOutputsParams(json=schema), seed)
    for text, finish_reason in results:
        if finish_reason == "stop":
            jsonschema.validate(json.loads(text), schema)
        else:
            assert finish_reason == "length", (text, finish_reason)
            assert bound is None or bound > MAX_TOKENS, f"a {bound}-byte language did not finish: {text!r}"


@PROPERTY_SETTINGS
@given(regex=regexes(), seed=st.integers(0, 2**32))
def test_regex_outputs_match_fully(tiny_engine: Engine, regex: tuple[str, bool], seed: int) -> None:
    pattern, finite = regex
    for text, finish_reason in _run(tiny_engine, StructuredOutputsParams(regex=pattern), seed):
        if finish_reason == "stop":
            assert re.fullmatch(pattern, text), (pattern, text)
        else:
            assert not finite and finish_reason == "length", (pattern, text, finish_reason)


@PROPERTY_SETTINGS
@given(choices=CHOICES, seed=st.integers(0, 2**32))
def test_choice_outputs_are_one_of_the_choices(tiny_engine: Engine, choices: list[str], seed: int) -> None:
    for text, finish_reason in _run(tiny_engine, StructuredOutputsParams(choice=choices), seed):
        assert (text, finish_reason) in [(c, "stop") for c in choices] or any(
            c.startswith(text) and c != text for c in choices
        ), (choices, text, finish_reason)
        assert finish_reason == "stop", "every choice is shorter than max_tokens"


def test_json_object_and_grammar(tiny_engine: Engine) -> None:
    grammar = 'start: "(" item ("," item)* ")"\nitem: /[0-9]{1,2}/ | "x"\n'
    for constraint, check in [
        (StructuredOutputsParams(json_object=True), lambda t: isinstance(json.loads(t), dict)),
        (StructuredOutputsParams(grammar=grammar), lambda t: re.fullmatch(r"\((\d{1,2}|x)(,(\d{1,2}|x))*\)", t)),
    ]:
        for text, finish_reason in _run(tiny_engine, constraint, seed=5):
            assert finish_reason == "length" or check(text), text


def test_whitespace_pattern_allows_only_that_whitespace(tiny_engine: Engine) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"enum": [1, 2]}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    # Compact by default: exactly json.dumps's separators, no other whitespace.
    for text, finish_reason in _run(tiny_engine, StructuredOutputsParams(json=schema), seed=1):
        assert finish_reason == "stop" and text == json.dumps(json.loads(text)), text
    spaced = StructuredOutputsParams(json=schema, whitespace_pattern=r"[ ]{0,2}")
    for text, finish_reason in _run(tiny_engine, spaced, seed=1):
        assert finish_reason == "stop" and "\n" not in text and "\t" not in text, text
        jsonschema.validate(json.loads(text), schema)


def test_exactly_one_constraint(tiny_engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match=r"exactly one of .* got none") as err:
        StructuredOutputsParams()
    assert err.value.param == "structured_outputs"
    with pytest.raises(InvalidRequestError, match="got regex, choice"):
        StructuredOutputsParams(regex="a", choice=["a"])
    with pytest.raises(InvalidRequestError, match="whitespace_pattern applies to json"):
        StructuredOutputsParams(regex="a", whitespace_pattern=" ")
    with pytest.raises(InvalidRequestError, match="choice must have 1 to"):
        StructuredOutputsParams(choice=[])
    with pytest.raises(InvalidRequestError, match=r"choice\[1\] must be a str"):
        StructuredOutputsParams(choice=["a", 3])
    with pytest.raises(InvalidRequestError, match="structured_outputs must be a StructuredOutputsParams"):
        SamplingParams(structured_outputs="a*")


def test_params_round_trip() -> None:
    constraint = StructuredOutputsParams(json={"type": "object"}, whitespace_pattern=" ?")
    params = SamplingParams(structured_outputs=constraint, max_tokens=5)
    assert params.structured_outputs == constraint
    assert json.loads(constraint.json) == {"type": "object"}
    assert pickle.loads(pickle.dumps(params)) == params
    assert SamplingParams(**params.to_dict()) == params
    assert SamplingParams(structured_outputs={"choice": ["a", "b"]}).structured_outputs.choice == ["a", "b"]
    assert "whitespace_pattern=' ?'" in repr(constraint)


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (StructuredOutputsParams(regex="a("), "regex does not compile"),
        (StructuredOutputsParams(grammar="start: missing_rule"), "grammar does not compile"),
        (StructuredOutputsParams(json='{"type": "no-such-type"}'), "json does not compile"),
        (StructuredOutputsParams(json="{not json"), "json is not valid JSON"),
        (StructuredOutputsParams(json="[1, 2]"), "json must be a JSON schema object"),
    ],
)
def test_constraints_that_do_not_compile_fail_at_add(tiny_engine: Engine, constraint, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message) as err:
        tiny_engine.generate("x", SamplingParams(max_tokens=4, structured_outputs=constraint), use_tqdm=False)
    assert err.value.param == "structured_outputs"
    # The engine keeps serving: nothing half-added stays behind.
    out = tiny_engine.generate("x", SamplingParams(max_tokens=3, temperature=0.0), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3
    assert not tiny_engine._core.has_unfinished_requests()


def test_eos_only_where_the_grammar_accepts(tiny_engine: Engine) -> None:
    (eos,) = tiny_engine._core.eos_token_ids
    # A strong bias to EOS cannot end the output before the grammar accepts, nor push past it.
    params = SamplingParams(
        temperature=0.0, max_tokens=20, logit_bias={eos: 100.0}, structured_outputs=StructuredOutputsParams(regex="ab+")
    )
    out = tiny_engine.generate("x", params, use_tqdm=False)[0].outputs[0]
    assert (out.text, out.finish_reason) == ("ab", "stop")
    assert out.token_ids[-1] == eos


def test_logprobs_are_of_the_constrained_distribution(tiny_engine: Engine) -> None:
    params = SamplingParams(
        temperature=1.0, seed=3, max_tokens=1, logprobs=5, structured_outputs=StructuredOutputsParams(regex="[ab]")
    )
    out = tiny_engine.generate("x", params, use_tqdm=False)[0].outputs[0]
    (entry,) = out.logprobs
    allowed = {t: lp for t, lp in entry.items() if lp.logprob > -math.inf}
    assert {lp.decoded_token for lp in allowed.values()} == {"a", "b"}
    assert sum(math.exp(lp.logprob) for lp in allowed.values()) == pytest.approx(1.0, abs=1e-5)


def test_jump_forward_keeps_outputs_and_saves_steps(tiny_engine: Engine, tiny_model_dir: Path) -> None:
    stepwise = Engine(str(tiny_model_dir), kv_cache_memory_bytes=8 << 20, structured_jump_forward=False)
    schema = {
        "type": "object",
        "properties": {"a_rather_long_fixed_key": {"enum": ["x", "y"]}, "another_long_key": {"type": "boolean"}},
        "required": ["a_rather_long_fixed_key", "another_long_key"],
        "additionalProperties": False,
    }
    for constraint in (StructuredOutputsParams(json=schema), StructuredOutputsParams(regex="fixed-(ab|cd)-tail[0-9]")):
        for temperature in (0.0, 1.0):
            params = SamplingParams(temperature=temperature, seed=9, max_tokens=80, structured_outputs=constraint)
            jumped = tiny_engine.generate(PROMPTS, params, use_tqdm=False)
            stepped = stepwise.generate(PROMPTS, params, use_tqdm=False)
            assert [o.outputs[0].token_ids for o in jumped] == [o.outputs[0].token_ids for o in stepped]
            assert all(o.outputs[0].finish_reason == "stop" for o in jumped)
            num_steps = [sum(1 for _ in e.generate_stream(PROMPTS[0], params)) for e in (tiny_engine, stepwise)]
            assert num_steps[0] < num_steps[1] / 2, num_steps
