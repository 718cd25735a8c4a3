"""Config-repo cases of real-world playbook shapes, shared by the behaviour tests and the differential test.

A case is a folder `tests/semantics/cases/<name>/`:

    case.yml    description (one line), kind (the class of input it stands for, e.g. "rescued-failure"),
                host (the inventory hostname the agent runs as; default testhost),
                playbooks (the role playbooks the host runs, in order; default: every playbooks/*.yml the
                host's groups name, as the agent plans them),
                deviations (ids of entries in docs/ansible-semantics.md where the agent is expected to
                differ from `ansible-playbook --check --diff`; default none),
                differential (false when a plain ansible-playbook run cannot be compared, with a reason in
                `differential_why`; default true),
                apply (true: the differential test also applies with both and compares the files left under
                target_root; two to four more Ansible runs; default false)
    repo/       the config repo exactly as committed: playbooks/, inventory/, and optionally ansible.cfg,
                roles/, collections/, requirements.yml. Every managed path is under "{{ target_root }}",
                and plays run against the local host (the runs pass ansible_connection=local).

`case_repo(case, dest)` commits `repo/` into a new Git repository at `dest` for the agent to pull.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import GitRepo

CASES_DIR = Path(__file__).resolve().parent / "cases"


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    description: str
    kind: str
    host: str = "testhost"
    playbooks: tuple[str, ...] = ()
    deviations: tuple[str, ...] = ()
    differential: bool = True
    differential_why: str = ""
    apply: bool = False

    @property
    def repo(self) -> Path:
        return self.path / "repo"


def load(name: str) -> Case:
    path = CASES_DIR / name
    data: dict[str, Any] = yaml.safe_load((path / "case.yml").read_text(encoding="utf-8")) or {}
    return Case(name=name, path=path, description=str(data["description"]), kind=str(data["kind"]),
                host=str(data.get("host", "testhost")), playbooks=tuple(data.get("playbooks") or ()),
                deviations=tuple(data.get("deviations") or ()),
                differential=bool(data.get("differential", True)),
                differential_why=str(data.get("differential_why", "")),
                apply=bool(data.get("apply", False)))


def all_cases() -> list[Case]:
    return [load(p.name) for p in sorted(CASES_DIR.iterdir()) if (p / "case.yml").is_file()]


def case_repo(case: Case, dest: Path) -> GitRepo:
    """A new Git repository at `dest` holding the case's repo/ as its first commit."""
    shutil.copytree(case.repo, dest)
    repo = GitRepo(dest)
    repo.git("init", "-q", "-b", "main")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", f"case {case.name}")
    return repo
