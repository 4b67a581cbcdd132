#!/usr/bin/env bash
# Run the Dockerfile's steps on this machine, without Docker or a registry: the build stage's `pip wheel` with the
# image constraints, then the final stage's index-free install into a clean virtual environment, then the image's
# entry point as the image's user (65532), as the chart runs it. What this cannot show: the base image itself, the
# arm64 build, and pushing. Usage: bash .ci/image_recipe_without_docker.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
# A system interpreter: the image user must be able to reach it (not one under /root).
python=${PYTHON:-/usr/bin/python3}
rm -rf "$work/context" "$work/wheels" "$work/build" "$work/image"
mkdir -p "$work/context/.ci"
# The build context as .dockerignore leaves it.
cp -r pyproject.toml README.md gpuguard webhook scheduler_ext node_agent "$work/context/"
cp .ci/image-constraints.txt "$work/context/.ci/"
find "$work/context" -name __pycache__ -prune -exec rm -rf {} +

echo "== build stage: pip wheel with .ci/image-constraints.txt"
"$python" -m venv "$work/build"
(cd "$work/context" && PIP_CONSTRAINT="$work/context/.ci/image-constraints.txt" \
  "$work/build/bin/python" -m pip wheel -q --no-cache-dir --wheel-dir "$work/wheels" .)
ls "$work/wheels" | wc -l | xargs echo "wheels:"

echo "== final stage: install from the wheels only (no index)"
"$python" -m venv "$work/image"
PYTHONDONTWRITEBYTECODE=1 "$work/image/bin/python" -m pip install -q --no-index --no-compile "$work"/wheels/*.whl
chmod -R a+rX "$work"

echo "== entry point as UID 65532"
# The entry point script is run through its own interpreter line's python, as the kernel would run it.
as_image_user() { setpriv --reuid 65532 --regid 65532 --clear-groups env HOME=/nonexistent PYTHONDONTWRITEBYTECODE=1 "$@"; }
entry=("$work/image/bin/python" "$work/image/bin/gpuguard")
cp charts/gpuguard/files/health-check.py "$work/health-check.py"
chmod a+r "$work/health-check.py"
cd "$work"
as_image_user "${entry[@]}" --help >/dev/null
for command in webhook extender agent certs policy; do as_image_user "${entry[@]}" "$command" --help >/dev/null; done
"$work/image/bin/python" -c 'import gpuguard.policy.loading as l; print(l.default_policy_text())' \
  | as_image_user "${entry[@]}" policy check -
# The chart's test pod runs files/health-check.py with the image's python3.
as_image_user "$work/image/bin/python" -c "import ast, sys; ast.parse(open(sys.argv[1]).read())" health-check.py
echo "image recipe: ok ($work)"
