"""Fixtures for the packaging tests. Those marked `fleet` need root and take minutes: they build the
packages (or take them from $GITOPS_TEST_DIST, as `make test-packages` does after `make packages`),
unpack the cached Debian 12 image and install into isolated hosts from a local signed repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import aptrepo, image, netns
from tests.harness.dist import deb
from tests.harness.fixtures import MIRRORED_DEPENDENCIES, seed_host

# dist, image_root, signing_key and fleet_root come from tests/harness/fixtures.py (a plugin of tests/).


@pytest.fixture(scope="session")
def apt_repo(dist: Path, signing_key: aptrepo.SigningKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    deps = aptrepo.download_debs(MIRRORED_DEPENDENCIES, image.cache_dir() / "debs")
    debs = [deb(dist, "gitops-agent"), deb(dist, "gitops-collector"), *deps]
    return aptrepo.build_apt_repo(tmp_path_factory.mktemp("aptrepo") / "repo", debs, signing_key)


@pytest.fixture(scope="session")
def bridge(fleet_root: None) -> Iterator[netns.Bridge]:
    with netns.Bridge("gapkg0", "10.213.7.1/24") as created:
        yield created


@pytest.fixture
def make_host(image_root: Path, apt_repo: Path, bridge: netns.Bridge,
              tmp_path: Path) -> Iterator[object]:
    """make_host(name, index) -> a started netns host seeded with the local repository."""
    hosts: list[netns.Host] = []

    def make(name: str, index: int) -> netns.Host:
        workdir = tmp_path / name
        seed_host(workdir / "upper", apt_repo)
        host = netns.Host.start(name, lower=image_root, workdir=workdir, bridge=bridge,
                                address=f"10.213.7.{10 + index}")
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.stop()
