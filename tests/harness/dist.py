"""Find built packages in a dist/ directory (output of packaging/build.py)."""

from __future__ import annotations

from pathlib import Path


def deb(dist: Path, name: str) -> Path:
    found = sorted(dist.glob(f"{name}_*_amd64.deb"))
    assert found, f"no {name} .deb in {dist}"
    return found[-1]


def rpm(dist: Path, name: str) -> Path:
    found = sorted(dist.glob(f"{name}-[0-9]*.x86_64.rpm"))
    assert found, f"no {name} .rpm in {dist}"
    return found[-1]
