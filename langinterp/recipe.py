"""Recipes: TOML files that describe an experiment, validated against `langinterp.schema`.

A resolved `Recipe` holds plain data only (dicts, lists, numbers, strings), every default filled in, so it
can be written back as TOML into a run directory and stored inside a checkpoint that loads with
`torch.load(weights_only=True)`. Errors name the key, and the file and line when the value came from a file.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from langinterp import schema
from langinterp.errors import UsageError
from langinterp.schema import Option

_ASSIGNMENT = re.compile(r'^\s*([A-Za-z0-9_\-."]+)\s*=')
_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_\-.\" ]+?)\s*\]")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: plain nested data plus the name it came under."""

    values: dict[str, Any]
    name: str

    def get(self, dotted: str) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            node = node[part]
        return node

    @property
    def data(self) -> dict[str, Any]:
        return self.values["data"]

    @property
    def model(self) -> dict[str, Any]:
        return self.values["model"]

    @property
    def optimizer(self) -> dict[str, Any]:
        return self.values["optimizer"]

    @property
    def scheduler(self) -> dict[str, Any]:
        return self.values["scheduler"]

    @property
    def trainer(self) -> dict[str, Any]:
        return self.values["trainer"]

    def to_toml(self) -> str:
        return tomli_w.dumps(self.values)

    def with_overrides(self, overrides: Iterable[str]) -> Recipe:
        return resolve(self.values, overrides, name=self.name)


def _key_lines(source: str) -> dict[str, int]:
    """Map dotted keys to the line they are assigned on, so errors can point into the file."""
    lines: dict[str, int] = {}
    prefix = ""
    for number, line in enumerate(source.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            prefix = header.group(1).replace('"', "").replace(" ", "") + "."
            lines.setdefault(prefix[:-1], number)
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment:
            lines.setdefault(prefix + assignment.group(1).replace('"', ""), number)
    return lines


class _Origins:
    """Where each key's value came from: a file and line, or the command line."""

    def __init__(self, path: str | None = None, source: str = "") -> None:
        self.path = path
        self.lines = _key_lines(source) if path else {}
        self.overridden: set[str] = set()

    def where(self, dotted: str) -> str:
        if any(key == dotted or key.startswith(dotted + ".") for key in self.overridden):
            return " (from the command line)"
        if self.path is None:
            return ""
        parts = dotted.split(".")
        for length in range(len(parts), 0, -1):
            line = self.lines.get(".".join(parts[:length]))
            if line is not None:
                return f" ({self.path}, line {line})"
        return f" ({self.path})"


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value`, the value a TOML literal (`1e-4`, `[84, 43]`, `"x"`) or else a bare string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"override {text!r} is not of the form key=value")
    return key, parse_value(raw.strip())


def parse_value(raw: str) -> Any:
    """A TOML literal (`1e-4`, `[84, 43]`, `"x"`), or else the text itself as a bare string."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(
        {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list"}[t]
        for t in types
    )


def _check_value(dotted: str, option: Option, value: Any, where: str) -> Any:
    """Return the value, converted where lossless (an integer where a float is expected), or raise."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and float in option.types
        and int not in option.types
    ):
        value = float(value)
    if (isinstance(value, bool) and bool not in option.types) or not isinstance(value, option.types):
        raise UsageError(f"{dotted} must be {_type_name(option.types)}, not {value!r}{where}")
    if isinstance(value, str) and option.choices is not None and value not in option.choices:
        raise UsageError(f"{dotted} must be one of {', '.join(option.choices)}; got {value!r}{where}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isnan(value):  # every comparison with NaN is false, so no bound below would catch it
            raise UsageError(f"{dotted} must be a number, not nan{where}")
        if option.minimum is not None and value < option.minimum:
            raise UsageError(f"{dotted} must be at least {option.minimum:g}; got {value!r}{where}")
        if option.maximum is not None and value > option.maximum:
            raise UsageError(f"{dotted} must be at most {option.maximum:g}; got {value!r}{where}")
    if isinstance(value, list) and option.item_types is not None:
        for item in value:
            if isinstance(item, bool) or not isinstance(item, option.item_types):
                raise UsageError(
                    f"{dotted} items must be {_type_name(option.item_types)}; got {item!r}{where}"
                )
    return value


def _unknown(dotted: str, known: Iterable[str], where: str) -> UsageError:
    close = difflib.get_close_matches(dotted, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"unknown key {dotted!r}{hint}{where}")


def _first_leaf(value: Any, dotted: str) -> str:
    """The full key of the first value under an unknown table, so the suggestion can name a real key."""
    while isinstance(value, Mapping) and value:
        key, value = next(iter(value.items()))
        dotted = f"{dotted}.{key}"
    return dotted


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"{'.'.join(parts[: parts.index(part) + 1])} is a value, not a table")
        node = child
    node[parts[-1]] = value


def _validate(raw: Mapping[str, Any], origins: _Origins) -> dict[str, Any]:
    model_type = raw.get("model", {}).get("type", "mlp") if isinstance(raw.get("model"), dict) else "mlp"
    if model_type not in schema.MODEL_TABLES:
        choices = ", ".join(schema.model_types())
        raise UsageError(
            f"model.type must be one of {choices}; got {model_type!r}{origins.where('model.type')}"
        )
    table = schema.recipe_table(model_type)
    values = _fill(table, raw, "", origins, schema.flatten(table))
    _check_together(values, origins)
    return values


def _check_together(values: dict[str, Any], origins: _Origins) -> None:
    """Rules that tie several keys together."""
    data = values["data"]
    if data["kind"] == "centered" and data["context"] % 2 == 0:
        raise UsageError(
            f"data.context must be odd for centered data (the middle character is hidden); "
            f"got {data['context']}{origins.where('data.context')}"
        )


def _fill(
    table: schema.Table, raw: Any, prefix: str, origins: _Origins, known: dict[str, Option]
) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        where = origins.where(prefix[:-1])
        raise UsageError(f"{prefix[:-1]} must be a table{where}")
    for key in raw:
        if key not in table:
            dotted = _first_leaf(raw[key], prefix + key)
            raise _unknown(dotted, known, origins.where(dotted))
    resolved: dict[str, Any] = {}
    for key, entry in table.items():
        dotted = prefix + key
        if isinstance(entry, Option):
            value = raw[key] if key in raw else copy.deepcopy(entry.default)
            if isinstance(value, Mapping):
                raise UsageError(f"{dotted} is a value, not a table{origins.where(dotted)}")
            resolved[key] = _check_value(dotted, entry, value, origins.where(dotted))
        else:
            resolved[key] = _fill(entry, raw.get(key, {}), dotted + ".", origins, known)
    return resolved


def resolve(
    raw: Mapping[str, Any],
    overrides: Iterable[str] = (),
    *,
    name: str = "recipe",
    origins: _Origins | None = None,
) -> Recipe:
    """Apply `key=value` overrides to raw recipe data, then validate and fill in every default."""
    origins = origins or _Origins()
    tree = copy.deepcopy(dict(raw))
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        origins.overridden.add(key)
    return Recipe(values=_validate(tree, origins), name=name)


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe file; every failure is one UsageError line."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"recipe {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read recipe {path}: {error}") from None
    try:
        raw = tomllib.loads(source)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path} is not valid TOML: {error}") from None
    return resolve(raw, overrides, name=path.stem, origins=_Origins(str(path), source))


def recipe_from_values(values: Mapping[str, Any], name: str) -> Recipe:
    """Rebuild a recipe stored as plain data (in a checkpoint or run directory), validating it again."""
    return resolve(values, name=name)
