"""A Git source over SSH with a deploy key and a pinned host key, against a real sshd (another fleet host).

fleet2 serves a copy of the config repository over SSH; fleet1 fetches it with `source.ssh_key` and
`source.known_hosts`. A known_hosts entry pinning another host's key makes the fetch fail on host key
verification: the agent never learns a host key on its own.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fleet.fleet import Fleet, Member

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(600)]

REPO_ON_SERVER = "/srv/git/fleet.git"


def host_key(member: Member) -> str:
    assert member.host is not None
    return " ".join(member.host.root_path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2])


def ssh_config(fleet: Fleet, server: Member, *, known_hosts: str) -> str:
    return yaml.safe_dump({
        "host": "fleet1",
        "source": {"url": f"ssh://root@{server.address}{REPO_ON_SERVER}", "ref": "main", "verify": "gpg",
                   "trusted_keys": "/etc/gitops-agent/trusted-keys", "timeout": "20s",
                   "ssh_key": "/etc/gitops-agent/deploy_key", "known_hosts": known_hosts},
        "state_dir": "/var/lib/gitops-agent-ssh",
        "mode": "detect",
    }, sort_keys=False)


def test_ssh_source_with_a_deploy_key_and_a_pinned_host_key(fleet: Fleet, tmp_path: Path) -> None:
    client, server, other = fleet.members["fleet1"], fleet.members["fleet2"], fleet.members["fleet3"]
    assert client.host is not None and server.host is not None
    shutil.copytree(fleet.repo.bare, server.host.root_path(REPO_ON_SERVER))
    key = tmp_path / "deploy_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet1-deploy", "-f", str(key)],
                   check=True)
    server.host.sh("cat >> /root/.ssh/authorized_keys", input_text=(tmp_path / "deploy_key.pub").read_text())
    client.host.sh("umask 077 && cat > /etc/gitops-agent/deploy_key", input_text=key.read_text())
    client.host.sh("cat > /etc/gitops-agent/known_hosts.pinned",
                   input_text=f"{server.address} {host_key(server)}\n")
    client.host.sh("cat > /etc/gitops-agent/known_hosts.wrong",
                   input_text=f"{server.address} {host_key(other)}\n")

    client.host.sh("cat > /etc/gitops-agent/ssh-wrong.yaml",
                   input_text=ssh_config(fleet, server, known_hosts="/etc/gitops-agent/known_hosts.wrong"))
    refused = client.run("gitops-agent", "run", "--check", "--config", "/etc/gitops-agent/ssh-wrong.yaml",
                         check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    # the run's summary (stdout) carries the cycle's error, once
    assert "Host key verification failed" in refused.stdout, refused.stdout + refused.stderr
    assert not client.host.root_path("/var/lib/gitops-agent-ssh/current").exists()  # nothing checked out

    client.host.sh("cat > /etc/gitops-agent/ssh.yaml",
                   input_text=ssh_config(fleet, server, known_hosts="/etc/gitops-agent/known_hosts.pinned"))
    fetched = client.run("gitops-agent", "run", "--check", "--json", "--config", "/etc/gitops-agent/ssh.yaml",
                         check=False)
    assert fetched.returncode in (0, 2), fetched.stdout + fetched.stderr
    report = yaml.safe_load(fetched.stdout)
    assert report["source"]["commit"] == fleet.repo.git("rev-parse", "HEAD"), report["source"]
    assert report["source"]["signature"]["status"] == "verified"
    assert report["errors"] == [], report["errors"]
    assert not client.host.root_path("/root/.ssh/known_hosts").exists()  # no host key learned anywhere
