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


# -- vendored content matched by its own metadata (issue 13, kind 10) --------------------------------

def vendor(root: Path, files: dict[str, str]) -> Path:
    write(root, files)
    return root


TOOLS_MANIFEST = ('{"collection_info": {"namespace": "acme", "name": "tools", "version": "1.2.0", '
                  '"repository": "https://git.example.com/acme/ansible-collection-tools"}}')


@pytest.mark.parametrize("entry", [
    "acme.tools",
    "{name: acme.tools, version: '>=1.0'}",
    "{name: 'https://git.example.com/acme/ansible-collection-tools.git', type: git, version: v1.2.0}",
    "'git+https://git.example.com/acme/ansible-collection-tools.git,v1.2.0'",
    "'git+ssh://git@git.example.com/acme/ansible-collection-tools.git'",
    "'git@git.example.com:acme/ansible-collection-tools.git'",
    "{name: 'https://GIT.example.com/acme/ansible-collection-tools/', type: git}",
    "{name: 'https://git.example.com/acme/ansible-collection-tools.git#/', type: git}",
    "{name: 'https://files.example.com/dist/acme-tools-1.2.0.tar.gz', type: url}",
    "{name: ./dist/acme-tools-1.2.0.tar.gz, type: file}",
])
def test_a_vendored_collection_is_found_by_any_name_galaxy_accepts(tmp_path: Path, entry: str) -> None:
    vendor(tmp_path, {"requirements.yml": f"collections:\n  - {entry}\n",
                      "collections/ansible_collections/acme/tools/MANIFEST.json": TOOLS_MANIFEST})
    assert requirements.missing(tmp_path) == []


def test_a_collection_from_source_matches_by_galaxy_yml_or_its_repository_name(tmp_path: Path) -> None:
    vendor(tmp_path, {
        "requirements.yml": "collections:\n"
                            "  - {name: 'https://git.example.com/ops/monitoring-checks.git', type: git}\n"
                            "  - 'git+https://git.example.com/acme/ansible-collection-utils.git,main'\n"
                            "  - {name: 'https://git.example.com/acme/acme.net.git', type: git}\n",
        "collections/ansible_collections/acme/monitoring/galaxy.yml":
            "namespace: acme\nname: monitoring\nversion: 0.3.0\n"
            "repository: https://git.example.com/ops/monitoring-checks\n",
        "collections/ansible_collections/acme/utils/galaxy.yml": "namespace: acme\nname: utils\nversion: 1.0.0\n",
        "collections/ansible_collections/acme/net/MANIFEST.json":
            '{"collection_info": {"namespace": "acme", "name": "net"}}'})
    assert requirements.missing(tmp_path) == []


def test_a_source_no_vendored_collection_claims_is_named(tmp_path: Path) -> None:
    vendor(tmp_path, {
        "requirements.yml": "collections:\n  - {name: 'https://git.example.com/acme/other.git', type: git}\n",
        "collections/ansible_collections/acme/tools/MANIFEST.json": TOOLS_MANIFEST})
    assert requirements.missing(tmp_path) == ["collection https://git.example.com/acme/other.git"]
    with pytest.raises(PlanError, match=r"collection https://git.example.com/acme/other.git, not vendored.*"
                                        r"repository of its MANIFEST.json or galaxy.yml"):
        requirements.check(tmp_path)


@pytest.mark.parametrize(("entry", "folder", "meta"), [
    ("acme.nginx", "acme.nginx", ""),
    ("{src: acme.nginx}", "nginx", "galaxy_info: {namespace: acme, role_name: nginx}\n"),
    ("{name: acme.nginx}", "web", "galaxy_info: {author: acme, role_name: nginx}\n"),
    ("'git+https://git.example.com/ops/ansible-role-ntp.git,v1.4.0,ntp'", "ntp", ""),
    ("'git+https://git.example.com/ops/ansible-role-ntp.git,v1.4.0'", "ansible-role-ntp", ""),
    ("{src: 'https://git.example.com/ops/ansible-role-ntp.git', scm: git, version: v1}", "ntp", ""),
    ("{src: 'https://git.example.com/ops/ansible-role-ntp.git', scm: git}", "time", "galaxy_info: {role_name: ntp}\n"),
    ("{src: 'https://git.example.com/ops/hardening.git', scm: git, name: ssh_hardening}", "ssh_hardening", ""),
    ("{src: 'https://files.example.com/roles/limits-1.0.tar.gz', name: limits}", "limits", ""),
    ("{src: 'git@git.example.com:ops/ansible-role-ntp.git', scm: git}", "ansible-role-ntp", ""),
])
def test_a_vendored_role_is_found_by_any_name_galaxy_accepts(tmp_path: Path, entry: str, folder: str,
                                                             meta: str) -> None:
    files = {"roles/requirements.yml": f"- {entry}\n", f"roles/{folder}/tasks/main.yml": ""}
    if meta:
        files[f"roles/{folder}/meta/main.yml"] = meta
    vendor(tmp_path, files)
    assert requirements.missing(tmp_path) == []


def test_a_role_of_another_namespace_is_not_taken_for_it(tmp_path: Path) -> None:
    vendor(tmp_path, {"requirements.yml": "roles:\n  - acme.nginx\n",
                      "roles/nginx/meta/main.yml": "galaxy_info: {namespace: other, role_name: nginx}\n"})
    assert requirements.missing(tmp_path) == ["role acme.nginx"]


def test_vendored_content_is_searched_where_ansible_cfg_says(tmp_path: Path) -> None:
    vendor(tmp_path, {"ansible.cfg": "[defaults]\ncollections_path = ./vendor/collections\n"
                                     "roles_path = ./galaxy_roles:./roles\n",
                      "requirements.yml": "collections: [acme.tools]\nroles: [acme.motd, site]\n",
                      "vendor/collections/ansible_collections/acme/tools/MANIFEST.json": TOOLS_MANIFEST,
                      "galaxy_roles/acme.motd/tasks/main.yml": "",
                      "playbooks/roles/site/tasks/main.yml": ""})
    assert requirements.missing(tmp_path) == ["role site"]  # playbooks/roles: only with the playbooks dir
    assert requirements.missing(tmp_path, tmp_path / "playbooks") == []


def test_content_outside_the_checkout_does_not_count_as_vendored(tmp_path: Path) -> None:
    outside = vendor(tmp_path / "elsewhere", {"roles/acme.motd/tasks/main.yml": ""})
    checkout = vendor(tmp_path / "checkout", {"ansible.cfg": f"[defaults]\nroles_path = {outside}/roles\n",
                                              "requirements.yml": "roles: [acme.motd]\n"})
    assert requirements.missing(checkout) == ["role acme.motd"]


def test_the_case_repo_with_git_url_requirements_is_fully_vendored() -> None:
    from tests.semantics.cases import load

    case = load("requirements-git-url")
    assert requirements.missing(case.repo, case.repo / "playbooks") == []
