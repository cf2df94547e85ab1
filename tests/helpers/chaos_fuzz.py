"""Malformed input for every command subject, built from the contracts (contracts/).

``command_schemas`` maps each command subject of contracts/subjects.json to
the JSON Schema of its payload, from the service's AsyncAPI document.
``InstanceBuilder`` makes a valid instance of a schema, with the real ids a
probe hands it where a field names one; ``fuzz_payloads`` makes a subject's
payloads: random bytes, odd scraps, random JSON, JSON nested 10,000 deep, a
valid instance, one with a duplicate key, and instances with one to three
fields mutated (wrong types, long strings, deep nesting inside a field,
unicode oddities, nulls, extreme numbers, unknown ids, extra or missing
fields, impossible datetimes). Seeded: a failure is reproduced by its seed.
Touches no subject itself.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
TWO_MIB = 2 * 1024 * 1024
DEEP = 10_000

Schema = dict[str, Any]


def command_schemas(contracts: Path = CONTRACTS) -> dict[str, tuple[Schema, Schema]]:
    """Each command subject's payload schema, with the document its ``$ref`` s resolve in."""
    subjects = json.loads((contracts / "subjects.json").read_text())["commands"]["all"]
    found: dict[str, tuple[Schema, Schema]] = {}
    for path in sorted((contracts / "asyncapi").glob("*.json")):
        doc = json.loads(path.read_text())
        for channel in doc["channels"].values():
            (message,) = channel["messages"].values()
            payload = _resolve(doc, _resolve(doc, message)["payload"])
            found[channel["address"]] = (payload, doc)
    missing = sorted(set(subjects) - set(found))
    assert not missing, f"no schema in contracts/asyncapi for {missing}"
    return {subject: found[subject] for subject in subjects}


def heartbeat_schema(name: str, contracts: Path = CONTRACTS) -> tuple[Schema, Schema]:
    """``RunHeartbeat`` or ``AgentHeartbeat`` from contracts/schemas (self-contained)."""
    schema: Schema = json.loads((contracts / "schemas" / f"{name}.json").read_text())
    return schema, schema


def _resolve(doc: Schema, node: Schema) -> Schema:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


class InstanceBuilder:
    """Valid instances of a schema; fields named like an id get the probe's real ones."""

    def __init__(self, doc: Schema, real: Mapping[str, Any], rng: random.Random) -> None:
        self.doc = doc
        self.real = real
        self.rng = rng

    def build(self, node: Schema, depth: int = 0) -> Any:
        node = _resolve(self.doc, node)
        if "anyOf" in node:
            options = [_resolve(self.doc, o) for o in node["anyOf"]]
            not_null = [o for o in options if o.get("type") != "null"]
            return self.build(self.rng.choice(not_null) if not_null and self.rng.random() < 0.8 else options[0], depth)
        if "enum" in node:
            return self.rng.choice(node["enum"])
        kind = node.get("type")
        if kind == "object" or "properties" in node:
            return self._object(node, depth)
        if kind == "array":
            low = node.get("minItems", 0)
            count = self.rng.randint(low, max(low, min(node.get("maxItems", 3), 3)))
            return [self.build(node.get("items", {}), depth + 1) for _ in range(count)]
        if kind == "string":
            return self._string(node)
        if kind == "integer":
            low = node.get("minimum", 0)
            return self.rng.randint(low, min(node.get("maximum", low + 10), low + 10))
        if kind == "number":
            low = float(node.get("minimum", node.get("exclusiveMinimum", 0)) or 0)
            return low + self.rng.choice((0.5, 1.0, 30.0))
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._any_json(depth)  # JsonValue: anything

    def _object(self, node: Schema, depth: int) -> dict[str, Any]:
        required = set(node.get("required", []))
        out: dict[str, Any] = {}
        for name, sub in node.get("properties", {}).items():
            if name in required or self.rng.random() < 0.5:
                out[name] = (
                    self.real[name] if name in self.real and self.rng.random() < 0.9 else self.build(sub, depth + 1)
                )
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and not node.get("properties") and self.rng.random() < 0.5:
            out[self._word(8)] = self.build(extra, depth + 1)
        return out

    def _string(self, node: Schema) -> str:
        if node.get("format") == "date-time":
            return datetime.now(UTC).isoformat()
        pattern = node.get("pattern")
        if pattern and pattern.startswith("^(") and pattern.endswith(")$"):
            return str(self.rng.choice(pattern[2:-2].split("|")))
        low = max(node.get("minLength", 1), 1)
        return self._word(self.rng.randint(low, max(low, min(node.get("maxLength", 12), 12))))

    def _word(self, length: int) -> str:
        return self.rng.choice(string.ascii_letters) + "".join(
            self.rng.choice(string.ascii_letters + string.digits) for _ in range(length - 1)
        )

    def _any_json(self, depth: int) -> Any:
        roll = self.rng.random()
        if depth > 3 or roll < 0.4:
            return self.rng.choice([1, -7, 2.5, "x", True, None, ""])
        if roll < 0.7:
            return [self._any_json(depth + 1) for _ in range(self.rng.randint(0, 3))]
        return {self._word(5): self._any_json(depth + 1) for _ in range(self.rng.randint(0, 3))}


def nested(depth: int, inner: Any = 1) -> str:
    """JSON text of ``depth`` nested arrays (built as text: json.dumps would recurse)."""
    return "[" * depth + json.dumps(inner) + "]" * depth


SCRAPS = [b"", b" ", b"\n", b"null", b"true", b"0", b"[]", b'""', b"\xff\xfe", b"{", b'{"a":', b"1e99999", b"\x00"]
_ODD_STRINGS = ["\ud800", "\x00", "\u202eevil", "\U0001f600" * 50, "a\u0000b", "\ufeff", " ", ""]
_ODD_NUMBERS: list[Any] = [-1, 0, 2**63, -(2**63), 2**64, 1e30, "1", float("nan")]


def _mutation(builder: InstanceBuilder, rng: random.Random) -> tuple[str, Any]:
    """One mutated value, and what kind of mutation it is."""
    kind = rng.choice(["type", "long", "deep", "unicode", "null", "number", "unknown_id", "datetime"])
    if kind == "type":
        return kind, rng.choice([[], {}, 17, True, "text", [1, 2], {"x": 1}])
    if kind == "long":
        return kind, "x" * rng.choice([100_000, 1_100_000])
    if kind == "deep":
        return kind, _RawJson(nested(rng.choice([1_000, DEEP])))
    if kind == "unicode":
        return kind, rng.choice(_ODD_STRINGS)
    if kind == "null":
        return kind, None
    if kind == "number":
        return kind, rng.choice(_ODD_NUMBERS)
    if kind == "unknown_id":
        return kind, str(uuid.uuid4())
    return kind, rng.choice(["2026-13-45T25:61:00", "2026-01-01T00:00:00", "yesterday", "9999-12-31T23:59:59+99:00"])


class _RawJson:
    """JSON text put in place as it is (a value json.dumps cannot write: too deep)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _dumps(value: Any) -> bytes:
    """JSON, with each _RawJson written as its text and NaN as the bare word."""
    raws: dict[str, str] = {}

    def swap(v: Any) -> Any:
        if isinstance(v, _RawJson):
            marker = f"@@raw{len(raws)}@@"
            raws[marker] = v.text
            return marker
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = json.dumps(swap(value))
    for marker, raw in raws.items():
        text = text.replace(json.dumps(marker), raw)
    return text.encode("utf-8", "surrogatepass")


def fuzz_payloads(
    schema: Schema, doc: Schema, real: Mapping[str, Any], rng: random.Random, count: int
) -> list[tuple[str, bytes]]:
    """``count`` payloads for one subject, every kind at least once when ``count`` allows, then mutations."""
    builder = InstanceBuilder(doc, real, rng)
    valid = builder.build(schema)
    made: list[tuple[str, bytes]] = [
        ("random_bytes", rng.randbytes(rng.randint(1, 4096))),
        ("scrap", rng.choice(SCRAPS)),
        ("random_json", _dumps(builder._any_json(0))),
        ("deep_top_level", nested(DEEP).encode()),
        ("valid", _dumps(valid)),
    ]
    if isinstance(valid, dict) and valid:
        first = next(iter(valid))
        text = _dumps(valid).decode("utf-8", "surrogatepass")
        made.append(("duplicate_key", ("{" + json.dumps(first) + ": 1, " + text[1:]).encode("utf-8", "surrogatepass")))
    fields = list(_resolve(doc, schema).get("properties", {}))
    while len(made) < count:
        instance = builder.build(schema)
        if not isinstance(instance, dict):
            made.append(("random_json", _dumps(builder._any_json(0))))
            continue
        kinds = []
        for _ in range(rng.randint(1, 3)):
            roll = rng.random()
            if roll < 0.1 and instance:
                instance.pop(rng.choice(list(instance)))
                kinds.append("dropped_field")
            elif roll < 0.2 or not fields:
                instance[builder._word(6)] = 1
                kinds.append("extra_field")
            else:
                kind, value = _mutation(builder, rng)
                instance[rng.choice(fields)] = value
                kinds.append(kind)
        made.append(("mutated:" + "+".join(kinds), _dumps(instance)))
    return made


def two_mib(schema: Schema, doc: Schema, real: Mapping[str, Any], rng: random.Random) -> bytes:
    """A valid instance with one string field (or a padding field) grown past 2 MiB."""
    instance = InstanceBuilder(doc, real, rng).build(schema)
    fields = [name for name, sub in _resolve(doc, schema).get("properties", {}).items() if "string" in json.dumps(sub)]
    target = rng.choice(fields) if fields else "padding"
    if not isinstance(instance, dict):
        instance = {}
    instance[target] = "x" * (TWO_MIB + 64)
    return _dumps(instance)
