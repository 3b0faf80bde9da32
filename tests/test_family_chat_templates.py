"""Chat templates in each family's documented format render as transformers renders them.

The templates are written here from the families' documented prompt formats (ChatML with Qwen's
<tool_call> / <tool_response> blocks, Mistral's [INST] / [TOOL_CALLS] / [TOOL_RESULTS], Gemma's
<start_of_turn> turns with the system prompt folded into the first user turn, Phi-3's <|system|> /
<|user|> / <|assistant|> / <|end|>), not copied from a model hub. Each is stored in a tiny model's
tokenizer_config.json and rendered by Ember's template engine and by transformers' `apply_chat_template`
for conversations with system, user, assistant, tool-call and tool messages and hostile text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ember import Engine

from references import require

CHATML_TOOLS = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' and m.tool_calls is defined and m.tool_calls %}"
    "<|im_start|>assistant\n{{ m.content or '' }}"
    "{%- for call in m.tool_calls %}\n<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif m.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)

MISTRAL = (
    "{{ bos_token }}"
    "{%- if messages[0].role == 'system' %}{%- set system = messages[0].content %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for m in loop_messages %}"
    "{%- if m.role == 'user' %}[INST] {% if loop.first and system %}{{ system }}\n\n{% endif %}"
    "{{ m.content }}[/INST]"
    "{%- elif m.role == 'assistant' and m.tool_calls is defined and m.tool_calls %}[TOOL_CALLS] "
    "{{ m.tool_calls | map(attribute='function') | list | tojson }}{{ eos_token }}"
    "{%- elif m.role == 'assistant' %} {{ m.content }}{{ eos_token }}"
    "{%- elif m.role == 'tool' %}[TOOL_RESULTS] {{ {'content': m.content} | tojson }}[/TOOL_RESULTS]"
    "{%- else %}{{ raise_exception('Only system, user, assistant and tool roles are supported') }}"
    "{%- endif %}{%- endfor %}"
)

GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0].role == 'system' %}{%- set first = messages[0].content + '\n\n' %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set first = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for m in loop_messages %}"
    "{%- set role = 'model' if m.role == 'assistant' else m.role %}"
    "<start_of_turn>{{ role }}\n{{ first if loop.first else '' }}{{ m.content | trim }}<end_of_turn>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<start_of_turn>model\n{%- endif %}"
)

PHI3 = (
    "{%- for m in messages %}"
    "{%- if m.role in ['system', 'user', 'assistant'] %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n"
    "{%- elif m.role == 'tool' %}<|user|>\nTool result: {{ m.content }}<|end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{%- else %}{{ eos_token }}{%- endif %}"
)

TEMPLATES = {"qwen-chatml-tools": CHATML_TOOLS, "mistral": MISTRAL, "gemma": GEMMA, "phi3": PHI3}

HOSTILE = "naïve café 🎉 <b>&amp;</b> \"quotes\" 'single' \\ back\\slash\r\n\ttab  {{ not a tag }} {% raw %}"

CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "system-user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": HOSTILE}],
    "multi-turn": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! " + HOSTILE},
        {"role": "user", "content": "  and then?  "},
    ],
    "tool-call": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C <&>"}},
                }
            ],
        },
        {"role": "tool", "content": '{"temperature": 21, "note": "sunny & warm"}'},
    ],
}


def _folder(tiny_model_dir: Path, tmp_path: Path, template: str) -> Path:
    """A copy of the tiny model whose tokenizer_config.json carries `template` (and a BOS token)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for path in tiny_model_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config |= {"chat_template": template, "bos_token": "<|im_start|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_family_templates_render_as_transformers(family: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    require("transformers")
    from transformers import AutoTokenizer

    folder = _folder(tiny_model_dir, tmp_path, TEMPLATES[family])
    ours = Engine(str(folder), dtype="float32", kv_cache_memory_bytes=16 << 20).tokenizer
    theirs = AutoTokenizer.from_pretrained(str(folder))
    for name, messages in CONVERSATIONS.items():
        if family == "gemma" and any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
            continue  # Gemma's documented format has no tool turns
        for add_generation_prompt in (True, False):
            want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            got = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
            assert got == want, f"{family} / {name} / add_generation_prompt={add_generation_prompt}"
