"""The vault password has one source, agent.yaml's vault_password_file, which both Ansible and the
redactor use. Any other source Ansible would take a password from (the repository's ansible.cfg, the
agent's environment) is refused with one clear line before Ansible runs: otherwise Ansible decrypts what
the redactor cannot see, and the plaintext reaches last_run.json, history, the outbox and the collector."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import Agent, cheap_repo

BIN = Path(sys.executable).parent
SECRET = "from-the-vault-Kq73Xw"
TEMPLATE_TASK = """\
    - name: Secret config
      ansible.builtin.copy:
        dest: "{{ target_root }}/secret.conf"
        content: "token={{ api_token }}\\n"
        mode: "0600"
"""


def vaulted(password_file: Path) -> str:
    out = subprocess.run([str(BIN / "ansible-vault"), "encrypt_string", "--vault-password-file",
                          str(password_file), SECRET, "--name", "api_token"], check=True, capture_output=True,
                         text=True).stdout
    return "".join(f"  {line}\n" for line in out.splitlines())


SOURCES = {
    "ansible.cfg vault_password_file": ("[defaults]\nvault_password_file = {pw}\n", {}, "sets vault_password_file"),
    "ansible.cfg vault_identity_list": ("[defaults]\nvault_identity_list = prod@{pw}\n", {},
                                        "sets vault_identity_list"),
    "ansible.cfg ask_vault_pass": ("[defaults]\nask_vault_pass = True\n", {}, "sets ask_vault_pass"),
    "ANSIBLE_VAULT_PASSWORD_FILE": (None, {"ANSIBLE_VAULT_PASSWORD_FILE": "{pw}"},
                                    "ANSIBLE_VAULT_PASSWORD_FILE is set in the agent's environment"),
    "ANSIBLE_VAULT_IDENTITY_LIST": (None, {"ANSIBLE_VAULT_IDENTITY_LIST": "prod@{pw}"},
                                    "ANSIBLE_VAULT_IDENTITY_LIST is set"),
}


@pytest.mark.parametrize("case", list(SOURCES))
def test_a_vault_password_from_anywhere_else_is_refused_and_nothing_leaks(agent: Callable[..., Agent],
                                                                          tmp_path: Path, case: str) -> None:
    password_file = tmp_path / "vault-pass"
    password_file.write_text("correct horse battery staple\n")
    password_file.chmod(0o600)
    outside_cfg = tmp_path / "elsewhere.cfg"
    outside_cfg.write_text(f"[defaults]\nvault_password_file = {password_file}\n")
    cfg, env, message = SOURCES[case]
    files = {"inventory/group_vars/app.yml": "api_token: !vault |\n" + vaulted(password_file)}
    if cfg is not None:
        files["ansible.cfg"] = cfg.format(pw=password_file)
    repo = cheap_repo(tmp_path / "origin", TEMPLATE_TASK, files=files)
    a = agent(repo.path)
    result = a.run("run", "--json", env={k: v.format(pw=password_file, cfg=outside_cfg) for k, v in env.items()})
    assert result.returncode == 78 and "Traceback" not in result.stderr, result.stderr  # configuration: EX_CONFIG
    report = json.loads(result.stdout)
    assert (report["status"], report["phase_reached"]) == ("error", "plan")
    (error,) = report["errors"]
    assert message in error["message"] and "vault_password_file in agent.yaml" in error["message"]
    assert not (tmp_path / "root/secret.conf").exists()  # refused before Ansible ran
    leaked = [p for p in a.state_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == [] and SECRET not in result.stdout + result.stderr


def test_ask_vault_pass_false_and_a_cfg_without_vault_settings_are_fine() -> None:
    from agent import vault

    assert vault.foreign_password_sources([Path("/nonexistent")], {"ANSIBLE_ASK_VAULT_PASS": "false",
                                                                   "HOME": "/nonexistent"}) == []


def test_an_ansible_config_in_the_agents_environment_never_reaches_ansible(agent: Callable[..., Agent],
                                                                          tmp_path: Path) -> None:
    """ANSIBLE_CONFIG naming a file with a vault password: the agent drops its own ANSIBLE_* variables
    (D-environment in docs/ansible-semantics.md), so Ansible never reads that file, decrypts nothing, and
    the vaulted task fails; the plaintext reaches nothing."""
    password_file = tmp_path / "vault-pass"
    password_file.write_text("correct horse battery staple\n")
    password_file.chmod(0o600)
    outside_cfg = tmp_path / "elsewhere.cfg"
    outside_cfg.write_text(f"[defaults]\nvault_password_file = {password_file}\n")
    files = {"inventory/group_vars/app.yml": "api_token: !vault |\n" + vaulted(password_file)}
    a = agent(cheap_repo(tmp_path / "origin", TEMPLATE_TASK, files=files).path)
    result = a.run("run", "--json", env={"ANSIBLE_CONFIG": str(outside_cfg)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "failed" and "vault" in json.dumps(report).lower()
    assert not (tmp_path / "root/secret.conf").exists()
    leaked = [p for p in a.state_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == [] and SECRET not in result.stdout + result.stderr
