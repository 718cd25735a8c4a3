"""Issue 13, kind 10: requirements named by Git or tarball URL, vendored in the repo, do not block the host.

The plan matches each requirements.yml entry with vendored content by the content's own metadata
(agent/requirements.py; the forms are tested in tests/test_requirements.py). Here the case repo runs for
real: its collection (named by Git URL) and role (git+https,version,name) are found by Ansible through the
repo's ansible.cfg paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.semantics.cases import case_repo, load


@pytest.mark.ansible
def test_requirements_named_by_url_run_from_the_vendored_copies(cli, write_config, tmp_path: Path) -> None:
    repo = case_repo(load("requirements-git-url"), tmp_path / "origin")
    result = cli("run", "--check", "--json", "--config", str(write_config(repo.path)))
    report = result.report
    assert (result.code, report["status"], report["errors"]) == (2, "drifted", []), result.err[-2000:]
    assert [(d["task"], d["diffs"][0]["after"]) for d in report["drift"]] == [
        ("Message of the day", "Managed by Acme tools.\n"), ("Time servers", "server time.example.com iburst\n")]
