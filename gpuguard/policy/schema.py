"""The policy schema read back from its pydantic models: the keys each part takes, and the reference page.

`gpuguard.policy.model` is the only definition of the policy format. A field's YAML key, type, default, bounds and
attribute docstring are read from the models here, both to suggest the key a misspelt one meant and to write
`docs/policy-reference.md` (`gpuguard policy schema`), so the reference cannot drift from what gpuguard loads: a new
key is documented by the docstring under its field. Pure.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gpuguard.policy.model import Policy, parse_duration

Loc = Sequence[int | str]

ROOT_TITLE = "GpuPolicy"
"""The root model's name in the reference: the policy file's `kind`."""


def _arms(annotation: Any) -> list[Any]:
    """The alternatives of `X | Y | None` (without None), or [annotation]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [arm for arm in typing.get_args(annotation) if arm is not type(None)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def key_of(name: str, info: FieldInfo) -> str:
    """The YAML key of a field: its camelCase alias."""
    return info.alias or name


def _field(model: type[BaseModel], key: str) -> FieldInfo | None:
    return next((info for name, info in model.model_fields.items() if key in (key_of(name, info), name)), None)


def _step(annotation: Any, part: int | str) -> Any | None:
    for arm in _arms(annotation):
        origin, args = typing.get_origin(arm), typing.get_args(arm)
        if _is_model(arm) and isinstance(part, str):
            info = _field(arm, part)
            return info.annotation if info is not None else None
        if origin in (tuple, list) and isinstance(part, int) and args:
            return args[0]
        if origin is dict and len(args) == 2:
            return args[1]
    return None


def annotation_at(loc: Loc, root: type[BaseModel] = Policy) -> Any | None:
    """The type at a policy path (`('rules', 0, 'gpu')` -> `GpuSpec | None`); None when the path leaves the schema."""
    annotation: Any = root
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    return annotation


def field_at(loc: Loc, root: type[BaseModel] = Policy) -> FieldInfo | None:
    """The model field a path ends at (`('rules', 0, 'name')` -> `Rule.name`); None when it ends elsewhere."""
    if not loc or not isinstance(loc[-1], str):
        return None
    model = next((arm for arm in _arms(annotation_at(loc[:-1], root)) if _is_model(arm)), None)
    return _field(model, loc[-1]) if model is not None else None


def keys_at(loc: Loc) -> tuple[str, ...]:
    """The YAML keys the mapping at `loc` takes (() when it is not one of our sections)."""
    model = next((arm for arm in _arms(annotation_at(loc)) if _is_model(arm)), None)
    return tuple(key_of(name, info) for name, info in model.model_fields.items()) if model is not None else ()


def choices_at(loc: Loc) -> tuple[str, ...]:
    """The values a closed set (`Literal`) at `loc` allows, or ()."""
    for arm in _arms(annotation_at(loc)):
        if typing.get_origin(arm) is Literal:
            return tuple(str(value) for value in typing.get_args(arm))
    return ()


# The reference page.

@dataclass(frozen=True, slots=True)
class Section:
    """One model of the policy and the paths where it appears."""

    model: type[BaseModel]
    paths: tuple[str, ...]

    @property
    def title(self) -> str:
        return ROOT_TITLE if self.model is Policy else self.model.__name__


def sections() -> list[Section]:
    """Every model reachable from the root, in the order a reader meets them (depth first, in field order)."""
    found: dict[type[BaseModel], list[str]] = {}
    _visit(Policy, "", found)
    return [Section(model, tuple(paths)) for model, paths in found.items()]


def _visit(model: type[BaseModel], path: str, found: dict[type[BaseModel], list[str]]) -> None:
    first = model not in found
    found.setdefault(model, []).append(path)
    if not first:
        return
    for name, info in model.model_fields.items():
        for child, suffix in _models_in(info.annotation):
            key = key_of(name, info)
            _visit(child, f"{path}.{key}{suffix}" if path else f"{key}{suffix}", found)


def _models_in(annotation: Any) -> Iterator[tuple[type[BaseModel], str]]:
    for arm in _arms(annotation):
        origin, args = typing.get_origin(arm), typing.get_args(arm)
        if _is_model(arm):
            yield arm, ""
        elif origin in (tuple, list) and args and _is_model(args[0]):
            yield args[0], "[]"
        elif origin is dict and len(args) == 2 and _is_model(args[1]):
            yield args[1], ".<name>"


def reference_markdown() -> str:
    """`docs/policy-reference.md`: one table per section, from the models."""
    lines = [
        "# Policy reference",
        "",
        "<!-- Generated from gpuguard/policy/model.py by `gpuguard policy schema`; edit the models, not this file. -->",
        "",
        "Every key of a `GpuPolicy` file, section by section. What the sections do together, and the checks that",
        "span several keys, are in [policy.md](policy.md). Keys are camelCase; an unknown key is an error.",
    ]
    for section in sections():
        lines += ["", f"## {section.title}", "", _one_line(section.model.__doc__ or "")]
        if section.paths != ("",):
            lines += ["", "At " + ", ".join(f"`{path}`" for path in section.paths) + "."]
        lines += ["", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [_row(name, info) for name, info in section.model.model_fields.items()]
    return "\n".join(lines) + "\n"


def _row(name: str, info: FieldInfo) -> str:
    cells = (f"`{key_of(name, info)}`", type_text(info), default_text(info), _one_line(info.description or ""))
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _is_duration(info: FieldInfo) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in info.metadata)


def type_text(info: FieldInfo) -> str:
    """`integer, 0 to 64`, `list of [Toleration](#toleration)`, `` `enforce` or `warn` ``."""
    text = "duration (`120s`, `2m`, `1m30s` or seconds)" if _is_duration(info) else _type_name(info.annotation)
    bounds = _bounds(info.metadata)
    return f"{text}, {bounds}" if bounds else text


def _type_name(annotation: Any) -> str:
    arms = _arms(annotation)
    if len(arms) > 1:
        return " or ".join(_type_name(arm) for arm in arms)
    arm = arms[0]
    origin, args = typing.get_origin(arm), typing.get_args(arm)
    if origin is typing.Annotated:
        bounds = _bounds(_flat_metadata(arm.__metadata__))
        return f"{_type_name(args[0])} ({bounds})" if bounds else _type_name(args[0])
    if _is_model(arm):
        title = ROOT_TITLE if arm is Policy else arm.__name__
        return f"[{title}](#{title.lower()})"
    if origin is Literal:
        values = [f"`{value}`" if value != "" else '`""`' for value in args]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(arm, str(arm))


def _flat_metadata(metadata: Sequence[object]) -> list[object]:
    """Constraints, with those a `Field(...)` inside `Annotated` carries taken out of it."""
    flat: list[object] = []
    for item in metadata:
        flat += _flat_metadata(item.metadata) if isinstance(item, FieldInfo) else [item]
    return flat


def _bounds(metadata: Sequence[object]) -> str:
    parts = []
    for item in _flat_metadata(metadata):
        if isinstance(item, annotated_types.Ge):
            parts.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Le):
            parts.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.MaxLen):
            parts.append(f"at most {item.max_length} characters")
        elif getattr(item, "pattern", None):
            parts.append(f"matching `{getattr(item, 'pattern')}`")
    return ", ".join(parts)


def default_text(info: FieldInfo) -> str:
    """The default as it would be written in the file; `required` when there is none."""
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if _is_duration(info):
        return f"`{value:g}s`"
    if isinstance(value, BaseModel):
        written = value.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        return f"`{_flow(written)}`" if written else "its keys' defaults"
    return f"`{_flow(value)}`"


def _flow(value: object) -> str:
    """A value as one line of flow-style YAML: `{count: 1}`, `[]`, `""`, `true`."""
    if value == "":
        return '""'
    plain = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(plain, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()
