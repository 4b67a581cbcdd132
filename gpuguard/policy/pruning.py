"""Load what can be loaded of a policy with schema errors, so that its other mistakes are found in the same run.

pydantic reports every schema error in one pass, but the checks that span fields (catalog membership, limits,
unique names) need a loaded `Policy`. So each part that fails the schema is cut out of a copy of the document, pass
after pass, until the rest loads, and those checks run on what remains. A required field with an example in its model
(a rule's `name`) stands in with the example first, so one bad name does not hide the rest of its rule. Only the first pass's errors are the
author's; later passes only find the consequences of earlier cuts. A later check's path is mapped back to the
original document (a cut list item would shift the indices after it), and a check that names a cut field (`exceeds
limits.maxGpusPerPod (8)` after a broken maxGpusPerPod fell back to its default), or that sits at a cut field, is
dropped, since it describes the default or the stand-in, not the file. Pure.
"""

from __future__ import annotations

import copy
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gpuguard.policy.positions import Loc, parse_path
from gpuguard.policy.schema import field_at

Model = TypeVar("Model", bound=BaseModel)

MAX_PASSES = 64
"""Each pass cuts at least one part; a document needing more than this is not worth checking further."""


@dataclass
class Salvage(Generic[Model]):
    """The schema errors of a document, and the model its valid parts make (None when nothing loads)."""

    errors: list[ErrorDetails]
    model: Model | None
    cuts: list[Loc] = field(default_factory=list)
    """What was cut, in the original document's coordinates."""
    _document: Any = None
    _origins: dict[int, list[int]] = field(default_factory=dict)
    """For each list that lost items (by id): the original index of each remaining item."""

    def relocate(self, path: str, message: str, *, path_of: Callable[[Loc], str]) -> str | None:
        """The original document's path for a later check's `path`, or None when the check is about a cut."""
        original = self.original(parse_path(path))
        if any(_names(message, path_of(cut)) or original[: len(cut)] == cut for cut in self.cuts):
            return None
        return path_of(original)

    def original(self, loc: Loc) -> Loc:
        """`loc` in the cut document -> the same place in the original document."""
        node, out = self._document, list[int | str]()
        for part in loc:
            if isinstance(node, list) and isinstance(part, int):
                out.append(self._origins.get(id(node), range(len(node)))[part] if part < len(node) else part)
                node = node[part] if part < len(node) else None
            else:
                out.append(part)
                node = node.get(part) if isinstance(node, dict) else None
        return tuple(out)


def _names(message: str, path: str) -> bool:
    """Whether `message` names the field `path` (`limits.maxGpusPerPod`, not the `mode` inside `models`)."""
    return re.search(rf"(?<![\w.\[]){re.escape(path)}(?![\w\[])", message) is not None


def salvage(document: dict[str, Any], model: type[Model]) -> Salvage[Model]:
    """Validate `document` as `model`; on errors, cut the failing parts until the rest validates."""
    try:
        return Salvage([], model.model_validate(document))
    except ValidationError as error:
        errors = error.errors()
    state = Salvage[Model](errors, None, _document=copy.deepcopy(document))
    failing = errors
    for _ in range(MAX_PASSES):
        if not _cut(state, model, [detail["loc"] for detail in failing]):
            return state
        try:
            state.model = model.model_validate(state._document)
            return state
        except ValidationError as error:
            failing = error.errors()
    return state


def _cut(state: Salvage[Any], model: type[BaseModel], locs: Sequence[Loc]) -> bool:
    """Cut the deepest existing part on each loc; False when nothing could be cut."""
    targets: dict[tuple[int, int | str], tuple[Any, int | str, Loc]] = {}
    for loc in locs:
        found = _deepest(state._document, loc)
        if found is None:
            if not _fill_root_literal(state._document, model, loc):
                return False
            continue
        parent, key, at = found
        if at == tuple(loc) and _stand_in(state, model, parent, key, at):
            continue
        targets[(id(parent), key)] = (parent, key, at)
    # Map every target to the original document before anything moves, then delete list items from the highest
    # index down so the lower indices stay valid.
    state.cuts += [state.original(at) for _, _, at in targets.values()]
    for parent, key, _ in sorted(targets.values(), key=lambda t: t[1] if isinstance(t[1], int) else -1, reverse=True):
        _delete(state, parent, key)
    return True


def _stand_in(state: Salvage[Any], model: type[BaseModel], parent: Any, key: int | str, at: Loc) -> bool:
    """Put a required field's example in place of its bad value, once; False when it has none or had its turn."""
    info = field_at(at, model)
    original = state.original(at)
    if info is None or not info.is_required() or not info.examples or original in state.cuts:
        return False
    state.cuts.append(original)
    parent[key] = info.examples[0]
    return True


def _deepest(document: Any, loc: Loc) -> tuple[Any, int | str, Loc] | None:
    """(container, key, path) of the deepest part of `loc` present in `document`; None when that is the root."""
    node: Any = document
    found: tuple[Any, int | str, Loc] | None = None
    for depth, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            found = (node, part, tuple(loc[: depth + 1]))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            found = (node, part, tuple(loc[: depth + 1]))
            node = node[part]
        else:
            break
    return found


def _delete(state: Salvage[Any], parent: Any, key: int | str) -> None:
    if isinstance(parent, list) and isinstance(key, int):
        origins = state._origins.setdefault(id(parent), list(range(len(parent))))
        del origins[key]
        del parent[key]
    elif isinstance(parent, dict):
        parent.pop(key, None)


def _fill_root_literal(document: dict[str, Any], model: type[BaseModel], loc: Loc) -> bool:
    """A missing or wrong top-level key with one possible value (`apiVersion`, `kind`) is set to it."""
    if len(loc) != 1:
        return False
    info = next((i for n, i in model.model_fields.items() if loc[0] in (n, i.alias)), None)
    if info is None or typing.get_origin(info.annotation) is not Literal or len(typing.get_args(info.annotation)) != 1:
        return False
    if document.get(str(loc[0])) == typing.get_args(info.annotation)[0]:
        return False
    document[str(loc[0])] = typing.get_args(info.annotation)[0]
    return True
