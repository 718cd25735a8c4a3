"""Session fixtures shared by the tiers that need root and real hosts (tests/packaging, tests/fleet).

A conftest takes them with `from tests.harness.fixtures import dist, image_root, ...`. They build the
packages (or take them from $GITOPS_TEST_DIST, as `make test-packages` and `make test-fleet` do after
`make packages`), unpack the cached Debian 12 image and make a throwaway signing key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import aptrepo, image

REPO = image.REPO_ROOT
DIST_ENV = "GITOPS_TEST_DIST"
# What an air-gapped site mirrors besides our packages: the agent's Debian dependencies that a minimal
# system lacks. The rest (python3, git, openssh-client) is in the image.
MIRRORED_DEPENDENCIES = ["python3-apt", "python-apt-common", "distro-info-data", "gpg", "gpgconf",
                         "libassuan0"]
REPO_IN_HOST = Path("/srv/gitops-repo")
TOOLS = ("debootstrap", "zstd", "dpkg-deb", "apt-ftparchive", "gpg", "unshare", "nsenter", "ip",
         "systemd-nspawn", "lintian", "rpmbuild", "createrepo_c")


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: this tier needs root (chroot, namespaces, mounts)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run `bash .ci/system-deps` (as root)")


@pytest.fixture(scope="session")
def fleet_root() -> None:
    need_root()


@pytest.fixture(scope="session")
def dist(fleet_root: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built packages: $GITOPS_TEST_DIST if set, else built now from this tree."""
    if os.environ.get(DIST_ENV):
        path = Path(os.environ[DIST_ENV]).resolve()
        assert list(path.glob("gitops-agent_*.deb")), f"no gitops-agent .deb in {path}"
        return path
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(REPO / "packaging/build.py"), "--out", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def image_root(fleet_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    started = time.monotonic()
    tarball = image.ensure_image()
    root = image.extract(tarball, tmp_path_factory.mktemp("image") / "root")
    print(f"\nimage {tarball.name}: ready and extracted in {time.monotonic() - started:.1f}s")
    yield root
    image.remove_tree(root)


@pytest.fixture(scope="session")
def signing_key(fleet_root: None, tmp_path_factory: pytest.TempPathFactory) -> aptrepo.SigningKey:
    return aptrepo.throwaway_key(tmp_path_factory.mktemp("gnupg"))


def seed_host(upper: Path, apt_repo: Path) -> None:
    """Before a host starts: its only apt source is the local signed repository."""
    shutil.copytree(apt_repo, upper / REPO_IN_HOST.relative_to("/"))
    sources = upper / "etc/apt/sources.list.d"
    sources.mkdir(parents=True, exist_ok=True)
    (sources / "gitops-agent.sources").write_text(aptrepo.apt_source(REPO_IN_HOST), encoding="utf-8")
