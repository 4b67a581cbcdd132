"""Where a field path sits in YAML text, as 1-based line and column, so an error can point at the spot to edit.

A path is the tuple pydantic reports (`('rules', 1, 'gpu', 'migProfile')`) or its printed form
(`rules[1].gpu.migProfile`, see `gpuguard.policy.loading.format_path`). The text is composed into YAML nodes, which
keep their marks, and never constructed: aliases stay shared nodes, so looking a path up costs its depth whatever the
document expands to. A mapping entry is located at its key (where the field is named), a list item at the item; a
path that leaves the document (a missing field) is located at the deepest part that exists. Pure: no I/O.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

import yaml

Loc = tuple[int | str, ...]
Position = tuple[int, int]
"""(line, column), both counted from 1 as editors count them."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_PATH_PART = re.compile(r"\[(?P<index>[0-9]+)\]|\[(?P<quoted>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]"
                        r"|\.?(?P<name>[^.\[\]]+)")


def parse_path(path: str) -> Loc:
    """`rules[1].gpu.migProfile` -> ('rules', 1, 'gpu', 'migProfile'); `namespaces['team-*']` keeps its key."""
    parts: list[int | str] = []
    for match in _PATH_PART.finditer(path):
        if match["index"] is not None:
            parts.append(int(match["index"]))
        elif match["quoted"] is not None:
            parts.append(str(ast.literal_eval(match["quoted"])))
        else:
            parts.append(match["name"])
    return tuple(parts)


class Positions:
    """Positions of paths in one YAML document; every lookup answers None when the text is not one YAML document."""

    def __init__(self, text: str) -> None:
        try:
            self._root: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            self._root = None

    def of(self, loc: Sequence[int | str]) -> Position | None:
        if self._root is None:
            return None
        node, mark = self._root, self._root.start_mark
        for part in loc:
            found = _child(node, part)
            if found is None:
                break
            node, mark = found
        return mark.line + 1, mark.column + 1


def _child(node: yaml.Node, part: int | str) -> tuple[yaml.Node, yaml.Mark] | None:
    """The node under `part` and the mark to report for it (a mapping key's own mark, a list item's)."""
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item: yaml.Node = node.value[part]
        return item, item.start_mark
    if isinstance(node, yaml.MappingNode):
        return _entry(node, str(part))
    return None


def _entry(node: yaml.MappingNode, key: str, seen: frozenset[int] = frozenset()) -> tuple[yaml.Node, yaml.Mark] | None:
    merged: list[yaml.Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            merged += value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        elif isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value_node, key_node.start_mark
    # `<<: *base` keys count too, after the mapping's own keys (YAML's merge rule); aliases can make that a cycle.
    seen = seen | {id(node)}
    for source in merged:
        if isinstance(source, yaml.MappingNode) and id(source) not in seen:
            found = _entry(source, key, seen)
            if found is not None:
                return found
    return None
