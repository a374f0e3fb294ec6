"""YAML for settings and recipes: ``yaml.safe_load``, except that a repeated key is an error.

Plain YAML keeps the last of two equal keys without a word, so a recipe with two arms of the same
name silently loses one, and a repeated training setting silently wins. Here it is a
``yaml.YAMLError`` that names both lines, so every caller that reports bad YAML reports this too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) that refuses duplicate mapping keys."""


def _mapping_without_repeats(loader: StrictSafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor" merges; its keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = key in first_line
        except TypeError:  # an unhashable key: construct_mapping gives its own error below
            continue
        if seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"found the key {key!r} twice (first on line {first_line[key] + 1}); each key may appear once",
                key_node.start_mark,
            )  # fmt: skip
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def load(text: str) -> Any:
    """``yaml.safe_load(text)``, with repeated keys refused (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass


def load_file(path: str | Path) -> Any:
    """Read and parse a YAML file; any problem is a ValueError of one line (where and why)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return load(text)
    except RecursionError:
        raise ValueError("not valid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(exc.problem or exc.context or "a syntax error").split())
        raise ValueError(f"not valid YAML: {problem}{where}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {' '.join(str(exc).split())[:300]}") from None
