"""agent.vault: the vault plaintexts of a checkout (encrypted here in-process with Ansible's VaultLib)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from ansible.parsing.vault import VaultLib, VaultSecret

from agent import vault
from agent.errors import PlanError
from agent.redact import VAULT_MARKER

PASSWORD = b"correct horse battery staple"


def encrypt(text: str, password: bytes = PASSWORD) -> str:
    return VaultLib().encrypt(text, VaultSecret(password)).decode()


def inline(text: str, password: bytes = PASSWORD, indent: int = 8) -> str:
    return "!vault |\n" + "".join(f"{' ' * indent}{line}\n" for line in encrypt(text, password).splitlines())


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "vault-pass"
    path.write_bytes(PASSWORD + b"\n")
    path.chmod(0o600)
    return path


def test_inline_whole_file_and_blob(tmp_path: Path, password_file: Path) -> None:
    repo = tmp_path / "repo"
    for name, text in {
        "inventory/hosts.yml": "all:\n  vars:\n    plain: not-a-secret\n    db_password: " + inline("inline-pw-1"),
        "playbooks/app.yml": "- hosts: all\n  vars:\n    raw: !unsafe '{{ x }}'\n    list:\n      - " + inline("nested-2"),
        "inventory/group_vars/app/vault.yml": encrypt("api_token: whole-3\nport: 5432\nflag: true\nn: [list-4]\n"),
        "playbooks/files/id_key": encrypt("-----BEGIN KEY-----\nkey-body-5\n-----END KEY-----\n"),
        ".git/objects/x": encrypt("in-git-history"),
    }.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    secrets = vault.vault_secrets(repo, password_file)
    assert secrets == {"inline-pw-1", "nested-2", "whole-3", "5432", "list-4",
                       "-----BEGIN KEY-----\nkey-body-5\n-----END KEY-----\n"}
    redact = vault.redactor(repo, patterns=[], password_file=password_file)
    assert redact("x key-body-5 whole-3 not-a-secret") == f"x {VAULT_MARKER} {VAULT_MARKER} not-a-secret"
    assert vault.redactor(repo, patterns=[], password_file=None)("whole-3") == "whole-3"


def test_other_passwords_are_skipped_with_a_warning(tmp_path: Path, password_file: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo/other.yml").write_text("x: " + inline("other-secret", b"another password"))
    with caplog.at_level(logging.WARNING):
        assert vault.vault_secrets(tmp_path / "repo", password_file) == frozenset()
    assert "other.yml: its vault values cannot be read" in caplog.text and "other-secret" not in caplog.text


def test_empty_password_file_is_a_plan_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(PlanError, match=r"vault_password_file .*empty: Invalid vault password"):
        vault.vault_secrets(tmp_path, empty)
