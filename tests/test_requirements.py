from __future__ import annotations

from pathlib import Path

import pytest

from agent import requirements
from agent.errors import PlanError


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_vendored_requirements_pass(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.yml": "collections:\n  - name: community.general\n    version: 9.0.0\n"
                                         "  - ansible.posix\nroles:\n  - name: acme.nginx\n",
                     "collections/ansible_collections/community/general/galaxy.yml": "",
                     "collections/ansible_collections/ansible/posix/galaxy.yml": "",
                     "roles/acme.nginx/tasks/main.yml": ""})
    requirements.check(tmp_path)


def test_missing_requirements_are_named(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.yml": "collections: [community.general]\n",
                     "roles/requirements.yml": "- src: https://git.example.com/roles/ntp.git\n"})
    with pytest.raises(PlanError, match=r"requirements name collection community.general, role https://"):
        requirements.check(tmp_path)
    assert requirements.missing(tmp_path) == ["collection community.general",
                                              "role https://git.example.com/roles/ntp.git"]


def test_no_requirements_file(tmp_path: Path) -> None:
    assert requirements.missing(tmp_path) == []


def test_bad_requirements_file(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.yml": "collections: community.general\n"})
    with pytest.raises(PlanError, match=r"requirements.yml: collections: expected a list"):
        requirements.check(tmp_path)
