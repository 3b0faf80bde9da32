"""The prompts of bench/spec_decode.py and bench/spec_bound.py: two workloads of input-grounded chat requests.

- `grounded` (the default): six requests of four kinds fixed before any speed was measured (rewrite, extract,
  edit code, summarise with quotes; two rewrites and two code edits), each over a passage long enough that the
  answer itself runs to about 64-200 tokens. Generation stops at the end of turn, as a user's request does.
- `copy`: short passages under "repeat / copy / rewrite unchanged" instructions, generated with `ignore_eos`
  to a fixed length (the workload of the earlier rounds, kept so its figures stay comparable): past the end of
  the copied passage the model invents a next turn that occurs nowhere in the prompt.
"""

from __future__ import annotations

import random

COPY_PASSAGES = [
    "def moving_average(values, window):\n    total = sum(values[:window])\n    out = [total / window]\n"
    "    for i in range(window, len(values)):\n        total += values[i] - values[i - window]\n"
    "        out.append(total / window)\n    return out\n",
    "The river rises in the northern hills, runs south through three small towns, and reaches the sea "
    "at a wide, shallow bay where fishing boats have landed their catch for more than two hundred years.",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n",
    "Meeting notes: the budget review moves to Thursday; Anna will send the revised figures by Tuesday; "
    "the new office opens on the first of March; all travel requests go through the shared form.",
    "SELECT name, city, total FROM orders JOIN customers ON orders.customer_id = customers.id "
    "WHERE total > 100 ORDER BY total DESC LIMIT 20;",
    "To reset the device, hold the power button for ten seconds, wait for the light to blink twice, "
    "then release the button and wait until the light stays green before unplugging the cable.",
]
COPY_TASKS = [
    "Repeat the following text exactly, without any comment:\n\n{}",
    "Copy the following passage word for word:\n\n{}",
    "Rewrite the following, keeping every word the same:\n\n{}",
]

GROUNDED_REQUESTS = [
    # rewrite
    "Rewrite the following paragraph in the past tense. Change nothing else.\n\n"
    "The library opens at nine in the morning and closes at six in the evening. On Saturdays the children's "
    "room hosts a reading hour, and volunteers help visitors find books, print documents and use the public "
    "computers. The reading room on the second floor is quiet, and the staff ask visitors to keep their phones "
    "silent. Every month the library holds a book sale, and the money pays for new books and repairs. "
    "Members can borrow laptops for two weeks at a time and renew them once by phone or at the front desk.",
    # extract
    "From the meeting notes below, list every task with its owner and its deadline, one per line, in the form "
    '"owner: task (deadline)".\n\n'
    "Meeting notes, project Atlas, weekly review. Anna will send the revised budget figures to the finance team "
    "by Tuesday. Ben will update the installation guide for the new release by Friday. Carla will book the "
    "meeting room for the customer workshop by next Monday. David will fix the login error reported by the "
    "support team by Wednesday. Emma will prepare the slides for the quarterly review by the end of the month. "
    "Frank will order the new test laptops by Thursday.",
    # edit code
    "Add type hints to every function in the following Python code. Return the complete code and nothing else."
    "\n\n"
    "def moving_average(values, window):\n    total = sum(values[:window])\n    out = [total / window]\n"
    "    for i in range(window, len(values)):\n        total += values[i] - values[i - window]\n"
    "        out.append(total / window)\n    return out\n\n\n"
    "def normalize(values):\n    low = min(values)\n    high = max(values)\n"
    "    return [(v - low) / (high - low) for v in values]\n",
    # summarise with quotes
    "Summarise the following report in a few sentences. Quote the key sentence of each paragraph word for word, "
    "in quotation marks.\n\n"
    "The new water treatment plant opened in March. It serves about forty thousand homes in the eastern district "
    "and replaces a plant that was built in 1962.\n\n"
    "During the first three months the plant met every quality target set by the regional authority. The "
    "engineers reported two short outages, both caused by a faulty pump that has since been replaced.\n\n"
    "The city plans to add a second filtration line next year. This will allow the plant to serve the northern "
    "district as well, where the old pipes are being replaced street by street.",
    # rewrite
    "Correct the spelling mistakes in the following text and return the corrected text only.\n\n"
    "To reset the devise, hold the power buton for ten seconds, wait for the light to blink twise, then release "
    "the button and wait untill the light stays green. If the light stays red, unplug the cable, wait one "
    "minut, plug it in again and repeat the steps abuve. If the problem continues, contact the suport team and "
    "give them the serial number printed on the back of the devise.",
    # edit code
    "In the following Python class, rename the attribute `items` to `elements` everywhere. Return the complete "
    "code and nothing else.\n\n"
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n\n    def pop(self):\n        if not self.items:\n"
    '            raise IndexError("pop from an empty stack")\n        return self.items.pop()\n\n'
    "    def peek(self):\n        return self.items[-1]\n\n    def __len__(self):\n        return len(self.items)\n",
]
WORKLOADS = ("grounded", "copy")


def conversations(workload: str, num: int, seed: int) -> list[list[dict[str, str]]]:
    """`num` seeded chat requests of `workload`, drawn with replacement (for the batched rows)."""
    rng = random.Random(seed)
    if workload == "grounded":
        return [[{"role": "user", "content": rng.choice(GROUNDED_REQUESTS)}] for _ in range(num)]
    return [[{"role": "user", "content": rng.choice(COPY_TASKS).format(rng.choice(COPY_PASSAGES))}] for _ in range(num)]


def single_stream_prompts(workload: str, num: int, seed: int) -> list[list[dict[str, str]]]:
    """`num` chat requests of `workload` for one stream each, cycling through its passages in order (so no
    single passage decides the batch-1 figure)."""
    if workload == "grounded":
        return [[{"role": "user", "content": GROUNDED_REQUESTS[i % len(GROUNDED_REQUESTS)]}] for i in range(num)]
    rng = random.Random(seed)
    return [
        [{"role": "user", "content": rng.choice(COPY_TASKS).format(COPY_PASSAGES[i % len(COPY_PASSAGES)])}]
        for i in range(num)
    ]


def grounded_prompts() -> list[list[dict[str, str]]]:
    """Every grounded request once, in order."""
    return single_stream_prompts("grounded", len(GROUNDED_REQUESTS), 0)
