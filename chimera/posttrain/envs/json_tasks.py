"""``json/<task>``: answers that must be JSON validating against a schema given in the prompt, with
the requested content. ``json/record``: a record of named fields described in prose;
``json/sort``: numbers as a sorted JSON array of integers."""

from __future__ import annotations

import json
import random
from typing import Any

from chimera.posttrain.envs.base import SingleTurnEnv
from chimera.posttrain.envs.schema import check_schema, validate

MAX_ANSWER_CHARS = 4096

RECORD_SCHEMA = {"type": "object", "required": ["name", "age", "city"], "additionalProperties": False,
                 "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0},
                                "city": {"type": "string", "enum": ["Paris", "Lagos", "Lima", "Oslo", "Pune"]}}}
SORT_SCHEMA = {"type": "array", "items": {"type": "integer"}, "minItems": 1}


class JSONEnv(SingleTurnEnv):
    """Reward 1 when the answer parses, validates against the schema and has the requested content."""

    def __init__(self, task: str):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown json task {task!r} (known: {', '.join(TASKS)})")
        self.id, self.task = f"json/{task}", task
        self.schema = TASKS[task]
        check_schema(self.schema)

    def sample(self, rng: random.Random) -> tuple[str, Any]:
        if self.task == "record":
            want = {"name": rng.choice(["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus"]), "age": rng.randrange(1, 99),
                    "city": rng.choice(RECORD_SCHEMA["properties"]["city"]["enum"])}
            text = f"{want['name']} is {want['age']} and lives in {want['city']}."
        else:
            xs = [rng.randrange(100) for _ in range(rng.randint(3, 6))]
            want, text = sorted(xs), "Sort: " + " ".join(map(str, xs))
        # The schema first, the content last: right before the answer, where a small model reads it best.
        return f"Answer with JSON matching the schema {json.dumps(self.schema)}. {text}", want

    def solution(self, problem: Any) -> tuple[str, str]:
        return "", json.dumps(problem)

    def check(self, problem: Any, answer: str) -> dict[str, float]:
        info = {"json_parsed": 0.0, "schema_valid": 0.0, "correct": 0.0}
        if len(answer) > MAX_ANSWER_CHARS:
            return info
        try:
            value = json.loads(answer)
        except (json.JSONDecodeError, RecursionError):
            return info
        info["json_parsed"] = 1.0
        if validate(value, self.schema):
            return info
        info["schema_valid"] = 1.0
        info["correct"] = float(value == problem)
        return info


TASKS = {"record": RECORD_SCHEMA, "sort": SORT_SCHEMA}
IDS = [f"json/{t}" for t in TASKS]
