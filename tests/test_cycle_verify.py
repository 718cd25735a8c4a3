"""The whole cycle with `source.verify: gpg`, for real (gpg, git, ansible with a local connection): a
signed commit is applied; an unsigned commit on top, a force-pushed older signed commit and a mirror
serving another signed history are each refused at verify, with nothing applied and the host kept on its
last verified commit. One ansible cycle in all: every refusal happens before any playbook runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import APP_INVENTORY, APP_PLAYBOOK
from tests.gitsign import Git, _gen_gpg_key, run

pytestmark = pytest.mark.ansible


def _signed_repo(path: Path, git_env: dict[str, str], signing: list[str], message: str) -> Git:
    run("git", "init", "-q", "-b", "main", str(path), env=git_env)
    for name, text in {"playbooks/app.yml": APP_PLAYBOOK, "inventory/hosts.yml": APP_INVENTORY}.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git = Git(path, git_env)
    git("add", "-A")
    git(*signing, "commit", "-q", "-S", "-m", message)
    return git


def test_only_signed_descendants_are_applied(cli, write_config, tmp_path: Path) -> None:
    home = tmp_path / "gh"
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GNUPGHOME=str(home), GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    try:
        _scenario(cli, write_config, tmp_path, env)
    finally:
        run("gpgconf", "--kill", "gpg-agent", env=env)


def _run(cli, config: Path) -> tuple[int, dict]:
    result = cli("run", "--json", "--config", str(config))
    assert result.out, result.err
    return result.code, result.report


def _scenario(cli, write_config, tmp_path: Path, env: dict[str, str]) -> None:
    fpr = _gen_gpg_key(env, "Alice <alice@example.com>")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "alice.asc").write_text(run("gpg", "--armor", "--export", fpr, env=env))
    alice = ["-c", f"user.signingkey={fpr}", "-c", "gpg.format=openpgp"]
    origin = tmp_path / "origin"
    git = _signed_repo(origin, env, alice, "initial, signed")
    older = git("rev-parse", "HEAD")
    git(*alice, "commit", "-q", "--allow-empty", "-S", "-m", "second, signed")
    signed = git("rev-parse", "HEAD")
    config = write_config(origin, source__verify="gpg", source__trusted_keys=str(trusted))
    state, conf = tmp_path / "state", tmp_path / "root/app.conf"

    def applied() -> str:
        return json.loads((state / "state.json").read_text())["applied_commit"]

    code, report = _run(cli, config)  # 1. signed by a trusted key: applied
    assert (code, report["status"], report["source"]["commit"]) == (0, "corrected", signed)
    assert report["source"]["signature"] == {"status": "verified", "signer": f"Alice <alice@example.com> [{fpr}]"}
    assert conf.read_text() == "version=1\n" and applied() == signed

    (origin / "inventory/hosts.yml").write_text(APP_INVENTORY.replace('"1"', '"2"'))
    git("commit", "-q", "-am", "unsigned change")  # 2. unsigned on top: refused at verify
    unsigned = git("rev-parse", "HEAD")
    code, report = _run(cli, config)
    assert (code, report["status"], report["phase_reached"]) == (1, "error", "verify")
    assert report["source"]["commit"] == unsigned
    assert report["source"]["signature"]["status"] == "unsigned"
    assert report["apply"] is None and report["drift"] == [] and report["stats"]["ok"] == 0
    assert conf.read_text() == "version=1\n" and applied() == signed
    assert (state / "current").readlink().name == signed

    git("reset", "-q", "--hard", older)  # 3. force-push replay of an older signed commit: a rewind
    code, report = _run(cli, config)
    assert (code, report["status"], report["phase_reached"]) == (1, "error", "verify")
    assert "does not descend" in report["errors"][-1]["message"]
    assert report["apply"] is None and applied() == signed and (state / "current").readlink().name == signed

    mirror = _signed_repo(tmp_path / "mirror", env, alice, "another history, signed")  # 4. a mirror
    other = mirror("rev-parse", "HEAD")
    config = write_config(tmp_path / "gone.git", source__verify="gpg", source__trusted_keys=str(trusted),
                          source__mirrors=[str(tmp_path / "mirror")])
    code, report = _run(cli, config)
    assert (code, report["status"], report["phase_reached"]) == (1, "error", "verify")
    message = report["errors"][-1]["message"]
    assert message.startswith(f"{tmp_path / 'mirror'}: ref 'main' moved from {signed[:12]} to {other[:12]}")
    assert "does not descend" in message
    assert report["apply"] is None and applied() == signed and conf.read_text() == "version=1\n"
