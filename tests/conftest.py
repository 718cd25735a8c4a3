"""Shared fixtures: real Git repositories, agent configs and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

# Session fixtures of the root-only tiers (packages, fleet): dist, image_root, signing_key, fleet_root.
pytest_plugins = ["tests.harness.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
GIT_ENV = {"GIT_AUTHOR_NAME": "Test Author", "GIT_AUTHOR_EMAIL": "author@example.com",
           "GIT_COMMITTER_NAME": "Test Author", "GIT_COMMITTER_EMAIL": "author@example.com",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


@dataclass
class GitRepo:
    path: Path

    def git(self, *args: str) -> str:
        out = subprocess.run(["git", "-C", str(self.path), *args], check=True, capture_output=True,
                             text=True, env={**os.environ, **GIT_ENV})
        return out.stdout.strip()

    def write(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        self.write(files)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    @property
    def head(self) -> str:
        return self.git("rev-parse", "HEAD")


def make_repo(path: Path, files: dict[str, str]) -> GitRepo:
    path.mkdir(parents=True)
    repo = GitRepo(path)
    repo.git("init", "-q", "-b", "main")
    repo.commit(files, "initial")
    return repo


# A tiny config repo: one role, two cheap tasks. Tests that need more add files.
APP_PLAYBOOK = """\
- name: App
  hosts: app
  gather_facts: false
  tasks:
    - name: App config
      ansible.builtin.copy:
        dest: "{{ target_root }}/app.conf"
        content: "version={{ app_version }}\\n"
        mode: "0644"
    - name: App folder
      ansible.builtin.file:
        path: "{{ target_root }}/data"
        state: directory
        mode: "0755"
"""
APP_INVENTORY = """\
all:
  children:
    app:
      hosts:
        testhost:
      vars:
        app_version: "1"
"""


@pytest.fixture
def app_repo(tmp_path: Path) -> GitRepo:
    return make_repo(tmp_path / "origin", {"playbooks/app.yml": APP_PLAYBOOK,
                                           "inventory/hosts.yml": APP_INVENTORY})


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(url: str | Path, **overrides: Any) -> Path:
        root = tmp_path / "root"
        root.mkdir(exist_ok=True)
        data: dict[str, Any] = {
            "host": "testhost", "source": {"url": str(url)}, "state_dir": str(tmp_path / "state"),
            "extra_vars": {"target_root": str(root)}, "lock_wait": "0s",
            "schedule": {"timeout": "120s"},
        }
        for key, value in overrides.items():
            section, _, sub = key.partition("__")
            if sub:
                data.setdefault(section, {})[sub] = value
            else:
                data[key] = value
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.out)
        return data


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run `gitops-agent ARGS` as its own process, as an operator would."""

    def run(*args: str, env: dict[str, str] | None = None) -> CliResult:
        proc = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, cwd=ROOT, timeout=600)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run
