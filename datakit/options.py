"""A step's settings: one dataclass that is the single source of its CLI flags, its recipe keys,
its validation and its cache-key version.

    @dataclass
    class FilterConfig(StepConfig):
        min_response_chars: int = option(2, "Shortest assistant turn kept, in characters.", low=0)

gives ``datakit filter --min-response-chars 2`` and the recipe key ``min_response_chars: 2``,
with the same help and the same check: a value that breaks it is an OptionError naming the key,
whether it came from a flag, a recipe or Python. The flag is the key with dashes; ``aliases``
keeps an older flag name working.

Types a field may have: bool, int, float, str, ``X | None`` of those, and ``tuple[str, ...]``
(a comma-separated flag, a YAML list or a comma-separated string).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import click

from datakit.errors import OptionError


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    open_range: bool = False,
    aliases: tuple[str, ...] = (),
    argument: bool = False,
    required: bool = False,
) -> Any:
    """A setting: its default, help text and the checks it must pass.

    ``low``/``high`` bound numbers (inclusive; ``open_range`` makes both bounds exclusive).
    ``argument`` makes it a positional CLI argument (synth's METHOD). ``required`` settings have
    no usable default: leaving one out is an error.
    """
    metadata = {"help": help, "choices": choices, "low": low, "high": high, "open": open_range,
                "aliases": aliases, "argument": argument, "required": required}  # fmt: skip
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class StepConfig:
    """Base of every step's settings: checks each field against its type and metadata after
    construction, then the step's own cross-field ``check()``."""

    # Bump when the same settings would give other output, so cached results are not reused.
    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("required") and value is None:
                raise OptionError(f.name, "is required")
            setattr(self, f.name, _checked(f.name, value, hints[f.name], f.metadata))
        self.check()

    def check(self) -> None:
        """Rules between settings (a subclass raises OptionError naming the key)."""

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> StepConfig:
        """From recipe keys (dashes accepted for underscores); an unknown key is an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        given = {str(k).replace("-", "_"): v for k, v in values.items()}
        for key in given:
            if key not in known:
                raise OptionError(key, f"unknown option; options: {', '.join(sorted(known))}")
        return cls(**given)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def click_params(cls) -> list[click.Parameter]:
        """The CLI flags (and arguments) of these settings, in field order."""
        hints = typing.get_type_hints(cls)
        params: list[click.Parameter] = []
        for f in dataclasses.fields(cls):
            params.append(_click_param(f, hints[f.name]))
        return params


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


MAX_INT = 2**63 - 1


def _checked(key: str, value: Any, annotation: Any, meta: Any) -> Any:
    kind, nullable = _base_type(annotation)
    if value is None:
        if nullable:
            return None
        raise OptionError(key, "needs a value")
    if kind is bool:
        if not isinstance(value, bool):
            raise OptionError(key, f"expected true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise OptionError(key, f"expected a whole number, got {value!r}")
        value = int(value)
    elif kind is float:
        if isinstance(value, str):  # YAML reads 1e-4 as a string
            try:
                value = float(value)
            except ValueError:
                raise OptionError(key, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise OptionError(key, f"expected a finite number, got {value!r}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise OptionError(key, f"expected text, got {value!r}")
    elif typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            value = tuple(x.strip() for x in value.split(",") if x.strip())
        if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
            raise OptionError(key, f"expected a list of names, got {value!r}")
        if not value:
            raise OptionError(key, "needs at least one name")
        value = tuple(value)
    choices = meta.get("choices")
    if choices:
        for item in value if isinstance(value, tuple) else (value,):
            if item not in choices:
                raise OptionError(key, f"must be one of {', '.join(choices)}, not {item!r}")
    low, high, open_range = meta.get("low"), meta.get("high"), meta.get("open")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        below = low is not None and (value <= low if open_range else value < low)
        above = high is not None and (value >= high if open_range else value > high)
        if below or above:
            raise OptionError(key, f"must be {_range_text(low, high, open_range)}, got {value}")
        if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:  # numpy, numba and torch take 64 bits
            raise OptionError(key, f"must be between -{MAX_INT} and {MAX_INT}, got {value}")
    return value


def _range_text(low: float | None, high: float | None, open_range: bool) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}" + (" (exclusive)" if open_range else "")
    if low is not None:
        return f"above {low}" if open_range else f"at least {low}"
    return f"below {high}" if open_range else f"at most {high}"


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _click_param(f: dataclasses.Field, annotation: Any) -> click.Parameter:
    meta = f.metadata
    kind, _ = _base_type(annotation)
    choices = meta.get("choices")
    if meta.get("argument"):
        return click.Argument([f.name], type=click.Choice(choices) if choices else None)
    names = [flag_name(f.name), *meta.get("aliases", ()), f.name]
    help_text = meta.get("help", "")
    if kind is bool:
        negative = "--no-" + f.name.replace("_", "-")
        return click.Option([f"{flag_name(f.name)}/{negative}", f.name], default=f.default, show_default=True,
                            help=help_text)  # fmt: skip
    if typing.get_origin(kind) is tuple:
        default = ",".join(f.default) if f.default else None
        return click.Option(names, type=str, default=default, show_default=True, help=help_text + " (comma-separated)")
    click_type: Any = {int: int, float: float, str: str}[kind]
    if choices:
        click_type = click.Choice(choices)
    return click.Option(names, type=click_type, default=f.default, show_default=f.default is not None,
                        required=bool(meta.get("required")), help=help_text)  # fmt: skip
