"""The objects `gpuguard mutate`/`validate -f` read: files, directories and standard input, as kubectl reads them.

Each `-f` is a file (any name), `-` (standard input, once) or a directory, walked recursively for `.yaml`, `.yml`
and `.json` files in name order. A file is a stream of YAML documents (JSON is YAML) or, named `.json`, one JSON
value. `kind: List` and the typed lists kubectl prints (`PodList`, `InferenceServiceList`) are opened into their
items, nested lists too. Empty documents (`---` alone) are skipped; anything else that is not a Kubernetes object (a
bare string, a list, a mapping without `kind`), an input with no objects at all and an unreadable path are errors:
a check that read nothing must not pass.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpuguard.policy.loading import yaml_error_text

SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"


class ManifestError(ValueError):
    """An input that cannot be checked; the message names the file and, where it helps, the document."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """One Kubernetes object and where it was read: `path` (or `-`) and `document` (1-based, `3` or `3.items[0]`)."""

    source: str
    document: str
    obj: dict[str, Any]

    @property
    def origin(self) -> str:
        return f"{self.source}#{self.document}"


def read_all(names: Sequence[str], *, stdin: Any = None) -> list[Manifest]:
    """Every object of every `-f`, in order; raise `ManifestError` for the first input that cannot be used."""
    if sum(1 for name in names if name == STDIN) > 1:
        raise ManifestError("standard input (-) can be given only once")
    found: list[Manifest] = []
    for name in names:
        found += _read_one(name, stdin if stdin is not None else sys.stdin)
    return found


def _read_one(name: str, stdin: Any) -> list[Manifest]:
    if name == STDIN:
        return _objects("-", _load(stdin.read(), "-", as_json=False), what="standard input")
    path = Path(name)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not files:
            raise ManifestError(f"{name}: a directory with no {', '.join(SUFFIXES)} files")
        return [manifest for file in files for manifest in _read_file(file)]
    return _read_file(path)


def _read_file(path: Path) -> list[Manifest]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file or directory") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read: {getattr(error, 'strerror', None) or error}") from None
    return _objects(str(path), _load(text, str(path), as_json=path.suffix.lower() == ".json"), what=str(path))


def _load(text: str, source: str, *, as_json: bool) -> list[Any]:
    try:
        return [json.loads(text)] if as_json else list(yaml.safe_load_all(text))
    except json.JSONDecodeError as error:
        raise ManifestError(f"{source}: not valid JSON: line {error.lineno}, column {error.colno}: {error.msg}") from None
    except yaml.YAMLError as error:
        raise ManifestError(f"{source}: {yaml_error_text(error)}") from None


def _objects(source: str, documents: Iterable[Any], *, what: str) -> list[Manifest]:
    found = [
        Manifest(source, where, obj)
        for index, document in enumerate(documents, start=1) if document is not None
        for where, obj in flatten(document, str(index), source=source)
    ]
    if not found:
        raise ManifestError(f"{what}: no Kubernetes objects in it (is it empty?)")
    return found


def flatten(document: Any, where: str, *, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The objects in one document: itself, or the items of a List (recursively). Pure."""
    if not isinstance(document, dict):
        raise ManifestError(
            f"{source}: document {where} is {_a(document)}, not a Kubernetes object (a mapping with apiVersion and kind)"
        )
    kind = document.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ManifestError(f"{source}: document {where} has no kind; every Kubernetes object names its kind")
    if not is_list(document):
        yield where, document
        return
    items = document.get("items")
    if not isinstance(items, list):
        raise ManifestError(f"{source}: document {where} is a {kind} whose items is not a list")
    for index, item in enumerate(items):
        yield from flatten(item, f"{where}.items[{index}]", source=source)


def is_list(document: dict[str, Any]) -> bool:
    """`kind: List`, or a typed list (`PodList`) as `kubectl get -o yaml` prints: a kind ending in List with items."""
    kind = str(document.get("kind"))
    return kind == "List" or (kind.endswith("List") and "items" in document)


def _a(value: object) -> str:
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({value!r})"
