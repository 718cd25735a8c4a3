"""Ansible collections vendored the way an air-gapped site does it: copied out of the `ansible` package.

    vendor_collection("ansible.posix", repo / "collections")   # -> collections/ansible_collections/ansible/posix

The `ansible` wheel (it bundles the community collections) is downloaded once with pip into the test cache
($GITOPS_TEST_CACHE_DIR or .cache/) and the collection's whole directory is copied, licence files included.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.harness.image import cache_dir

# The release of the `ansible` package that goes with the agent's ansible-core (2.19).
ANSIBLE_PACKAGE = ("ansible", "12.3.0")


def ansible_wheel() -> Path:
    name, version = ANSIBLE_PACKAGE
    folder = cache_dir() / "ansible-package"
    found = sorted(folder.glob(f"{name}-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", str(folder), f"{name}=={version}"], check=True)
        found = sorted(folder.glob(f"{name}-{version}-*.whl"))
    assert found, f"pip download {name}=={version} left no wheel in {folder}"
    return found[0]


def vendor_collection(fqcn: str, collections: Path) -> Path:
    """Copy collection `namespace.name` from the `ansible` wheel under collections/ansible_collections/."""
    namespace, name = fqcn.split(".")
    prefix = f"ansible_collections/{namespace}/{name}/"
    with zipfile.ZipFile(ansible_wheel()) as wheel:
        members = [m for m in wheel.namelist() if m.startswith(prefix) and not m.endswith("/")]
        assert members, f"the ansible package has no collection {fqcn}"
        for member in members:
            wheel.extract(member, collections)
    target = collections / prefix
    assert (target / "MANIFEST.json").is_file() and (target / "COPYING").is_file(), target
    return target
