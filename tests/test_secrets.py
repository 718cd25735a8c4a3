"""Secrets in reports, for real: vaulted vars (inline and a whole vaulted file) used in a template, a
no_log task, a templated task name and a failure message, plus a value matched by a `redact:` pattern.
One cycle runs them for real (the values reach the host), then none of them is found in the outbox, the
state dir, the agent's output and logs, or the collector's database after delivery."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from agent.redact import MARKER, VAULT_MARKER
from tests.conftest import make_repo
from tests.live_collector import CollectorProcess, free_port, token

pytestmark = pytest.mark.ansible
BIN = Path(sys.executable).parent
INLINE = "inline-Vault-Zq81xK"  # db_password: an inline !vault value
WHOLE = "wholefile-Vault-Pw93mL"  # api_token: in group_vars/app/vault.yml, encrypted whole
LICENSE = "LIC-4821-9930-1177"  # not vaulted: caught by the configured pattern
SECRETS = (INLINE, WHOLE, LICENSE)

PLAYBOOK = """\
- name: App
  hosts: app
  gather_facts: false
  tasks:
    - name: Database config
      ansible.builtin.template:
        src: db.conf.j2
        dest: "{{ target_root }}/db.conf"
        mode: "0600"
    - name: "Token {{ api_token }}"
      ansible.builtin.copy:
        dest: "{{ target_root }}/token"
        content: "{{ api_token }}\\n"
        mode: "0600"
      no_log: true
    - name: Register the license
      ansible.builtin.fail:
        msg: "license {{ license_key }} rejected for {{ db_password }}"
"""


def vault(*args: str) -> str:
    return subprocess.run([str(BIN / "ansible-vault"), *args], check=True, capture_output=True,
                          text=True).stdout


def vaulted_repo(tmp_path: Path, password_file: Path) -> Path:
    inline = vault("encrypt_string", "--vault-password-file", str(password_file), INLINE, "--name", "db_password")
    inventory = ("all:\n  children:\n    app:\n      hosts:\n        testhost:\n      vars:\n"
                 f"        license_key: {LICENSE}\n" + "".join(f"        {line}\n" for line in inline.splitlines()))
    repo = make_repo(tmp_path / "origin", {
        "playbooks/app.yml": PLAYBOOK, "inventory/hosts.yml": inventory,
        "playbooks/templates/db.conf.j2": "password={{ db_password }}\nlicense={{ license_key }}\n",
        "inventory/group_vars/app/vault.yml": f"api_token: {WHOLE}\n"})
    vault("encrypt", "--vault-password-file", str(password_file), str(repo.path / "inventory/group_vars/app/vault.yml"))
    repo.commit({}, "vault the token")
    return repo.path


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def database_text(path: Path) -> str:
    """Every value of every row of the collector's SQLite database, report blobs decompressed."""
    parts = []
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        with contextlib.suppress(zlib.error):
                            value = zlib.decompress(value)
                        value = value.decode(errors="replace")
                    parts.append(str(value))
    return "\n".join(parts)


def test_secrets_never_leave_the_host(cli, write_config, tmp_path: Path) -> None:
    password_file = tmp_path / "vault-pass"
    password_file.write_text("correct horse battery staple\n")
    password_file.chmod(0o600)
    db = f"sqlite:///{tmp_path / 'collector' / 'collector.db'}"
    (tmp_path / "collector").mkdir()
    subprocess.run([sys.executable, "-m", "agent.collector.cli", "migrate", "--db", db], check=True,
                   capture_output=True)
    token_file = tmp_path / "token"
    token_file.write_text(token(db, "testhost") + "\n")
    token_file.chmod(0o600)
    port = free_port()
    config = write_config(vaulted_repo(tmp_path, password_file), vault_password_file=str(password_file),
                          redact=[r"LIC-\d{4}-\d{4}-\d{4}"],
                          collector={"url": f"http://127.0.0.1:{port}", "token_file": str(token_file)})

    run = cli("-vv", "run", "--json", "--config", str(config))  # the collector is down: kept in the outbox
    report = run.report
    root = tmp_path / "root"
    assert (root / "db.conf").read_text() == f"password={INLINE}\nlicense={LICENSE}\n"  # vault works
    assert (root / "token").read_text() == f"{WHOLE}\n"
    assert (run.code, report["status"], report["phase_reached"]) == (1, "failed", "apply")
    (config_item, token_item) = report["drift"]
    assert config_item["diffs"][0]["after"] == f"password={VAULT_MARKER}\nlicense={MARKER}\n"
    assert token_item["task"] == f"Token {VAULT_MARKER}"
    assert token_item["diffs"] == [{"path": f"Token {VAULT_MARKER}", "before": "[REDACTED: no_log]",
                                    "after": "[REDACTED: no_log]"}]
    assert report["apply"]["failed_tasks"] == [{"task": "Register the license", "item": None,
                                                "message": f"license {MARKER} rejected for {VAULT_MARKER}"}]
    assert "debug" in run.err.lower() and not leaks(run.out) and not leaks(run.err)
    for shown in (cli("status", "--config", str(config)), cli("diff", "--config", str(config))):
        assert not leaks(shown.out + shown.err)

    state = tmp_path / "state"
    assert list((state / "outbox").rglob("*.json"))
    for path in state.rglob("*"):  # releases/ and repo/ hold the (encrypted) Git content
        if path.is_file() and not {"releases", "repo"} & set(path.relative_to(state).parts):
            assert not leaks(path.read_text(errors="replace")), path
    assert not [p for p in (state / "work").rglob("*") if p.is_file()]  # no runner artifacts kept

    collector = CollectorProcess(db, port).start()
    try:
        flushed = cli("outbox", "--flush", "--config", str(config))
        assert flushed.code == 0 and "delivered 1," in flushed.out
    finally:
        collector.stop()
    stored = database_text(tmp_path / "collector" / "collector.db")
    assert report["run_id"] in stored and VAULT_MARKER in stored
    assert not leaks(stored)
    for path in (tmp_path / "collector").iterdir():  # the raw files too (WAL, journal)
        assert not leaks(path.read_bytes().decode(errors="replace")), path
