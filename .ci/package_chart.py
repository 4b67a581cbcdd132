"""Package the chart for a release: version and appVersion set to the release's, the image pinned by digest.

    python .ci/package_chart.py VERSION [--digest sha256:...] [--registry HOST] [--repository PATH] [--out DIR]

A copy of charts/gpuguard gets VERSION (a leading "v" dropped) as its version and appVersion, and in values.yaml
the image's digest (the one the release just pushed) and, for a fork's registry, its registry and repository; then
`helm lint --strict` and `helm package` run on it. The chart in the repository stays as it is. Prints the path of the
.tgz. .github/workflows/release.yaml runs this; it runs the same way without a registry (leave out --digest).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "gpuguard"
VERSION = re.compile(r"^v?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)$")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("version", help="the release's semantic version, e.g. 0.2.0 or v0.2.0")
    parser.add_argument("--digest", default="", help="the pushed image's digest, sha256:<64 hex>")
    parser.add_argument("--registry", default="", help="image registry, if not the chart's (e.g. ghcr.io)")
    parser.add_argument("--repository", default="", help="image repository, if not the chart's (e.g. me/gpuguard)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the .tgz goes (default dist/)")
    parser.add_argument("--helm", default=shutil.which("helm") or "helm", help="the helm 3 binary")
    args = parser.parse_args(argv)
    match = VERSION.match(args.version)
    if match is None:
        parser.error(f"version {args.version!r} is not a semantic version such as 0.2.0")
    if args.digest and not DIGEST.match(args.digest):
        parser.error(f"--digest {args.digest!r} is not sha256: and 64 lower-case hex digits")
    with tempfile.TemporaryDirectory() as folder:
        chart = Path(folder) / "gpuguard"
        shutil.copytree(CHART, chart)  # files/mig-catalog.yaml, a link into the package, is copied as a file
        set_versions(chart / "Chart.yaml", match.group(1))
        set_image(chart / "values.yaml", {"registry": args.registry, "repository": args.repository,
                                          "digest": args.digest})
        subprocess.run([args.helm, "lint", "--strict", str(chart), "--namespace", "gpuguard"], check=True)
        args.out.mkdir(parents=True, exist_ok=True)
        subprocess.run([args.helm, "package", str(chart), "--destination", str(args.out)], check=True,
                       stdout=subprocess.DEVNULL)
    print(args.out / f"gpuguard-{match.group(1)}.tgz")
    return 0


def set_versions(chart_yaml: Path, version: str) -> None:
    text = chart_yaml.read_text()
    text = _replace_once(text, r"(?m)^version: .*$", f"version: {version}")
    text = _replace_once(text, r"(?m)^appVersion: .*$", f'appVersion: "{version}"')
    chart_yaml.write_text(text)


def set_image(values_yaml: Path, fields: dict[str, str]) -> None:
    """Set keys of the top-level `image:` block, keeping every comment of values.yaml."""
    text = values_yaml.read_text()
    block = re.search(r"(?ms)^image:\n(?:(?:  .*|\s*)\n)+", text)
    if block is None:
        raise SystemExit("values.yaml has no top-level image: block")
    body = block.group(0)
    for key, value in fields.items():
        if value:
            body = _replace_once(body, rf"(?m)^  {key}: .*$", f"  {key}: {value}")
    values_yaml.write_text(text[:block.start()] + body + text[block.end():])


def _replace_once(text: str, pattern: str, replacement: str) -> str:
    result, count = re.subn(pattern, replacement, text, count=1)
    if count != 1:
        raise SystemExit(f"nothing matches {pattern!r}")
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
