"""The repository documents itself: the contracts live in docs/, stay true to the code, and nothing points outside."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from gpuguard.contracts.node_inventory import parse_inventory
from gpuguard.policy.loading import default_policy_text, parse_policy
from tests.conftest import ROOT
from tests.test_cli_help import LEAVES

DOCS = ROOT / "docs"
# Written in pieces so this file does not match itself.
OUTSIDE = re.compile("|".join([r"DESIGN" + r"\.md", r"STYLE" + r"\.md", r"domain" + r"\.md", r"style-" + r"anchors",
                               r"/work" + r"/", r"reference" + r"/domain"]), re.IGNORECASE)


def repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_nothing_in_the_repository_points_to_documents_outside_it() -> None:
    found = []
    for path in repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary files
        found += [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}"
                  for m in OUTSIDE.finditer(text)]
    assert found == [], "point to docs/ (or the upstream source) instead"


MARKDOWN = sorted([ROOT / "README.md", ROOT / "SECURITY.md", *DOCS.glob("*.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_in_the_docs_resolves(page: Path) -> None:
    prose = re.sub(r"`[^`\n]*`", "", page.read_text())  # code spans are not links
    targets = [m.group(1) for m in LINK.finditer(prose) if "://" not in m.group(1)]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert missing == []


def test_the_documented_policy_example_is_the_default_policy() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (DOCS / "policy.md").read_text(), re.DOTALL)
    assert blocks[0].splitlines() == default_policy_text().splitlines()[1:]
    assert parse_policy(blocks[0]) == parse_policy(default_policy_text())


def test_the_documented_migcatalog_example_loads() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (DOCS / "policy.md").read_text(), re.DOTALL)
    extra = yaml.safe_load(textwrap.dedent(blocks[1]))
    policy = parse_policy(yaml.safe_dump({"apiVersion": "gpuguard.io/v1", "kind": "GpuPolicy", **extra}))
    assert policy.catalog.knows("1g.25gb")


def test_the_documented_node_annotation_parses_as_version_1() -> None:
    block = re.findall(r"```json\n(.*?)```", (DOCS / "node-annotation.md").read_text(), re.DOTALL)[0]
    inventory = parse_inventory(json.dumps(json.loads(block.replace("...", ""))))
    assert inventory.v == 1 and inventory.gpus[0].mig.devices[0].profile == "1g.10gb"


def test_the_cli_page_names_every_command_and_every_option() -> None:
    page = (DOCS / "cli.md").read_text()
    missing = []
    for path, parser in LEAVES.items():
        if f"gpuguard {' '.join(path)}" not in page:
            missing.append(" ".join(path))
        for action in parser._actions:  # argparse's own registry of the options
            missing += [f"{' '.join(path)} {o}" for o in action.option_strings if o.startswith("--") and o != "--help"
                        and o not in page]
    assert missing == [], "document them in docs/cli.md"
