"""Build the fleet in a box once per session (root only; `make test-fleet`).

1. A local signed apt repository: the agent's .deb built in this run (or $GITOPS_TEST_DIST), the Debian
   packages a minimal system lacks, and `hello` for the example `app` role.
2. A shared layer: one throwaway host installs gitops-agent from that repository with apt and gets the
   operators' SSH key and the site's commit-signing key; every fleet host is an overlay of that layer on
   the cached Debian 12 image, so the package is installed once, the way it would be on every server.
3. The config repository (the project's playbooks/ and inventory/ with this fleet's hosts), signed commits,
   served by `git daemon`, and the collector (SQLite; the tests' reader is an operator of rollouts), both
   on the bridge address in the main namespace.
4. Hosts fleet1-3 in their own namespaces (tini + sshd), fleet4 booted under systemd-nspawn running the
   packaged gitops-agent.service.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fleet.fleet import OPERATOR, POLL_S, ConfigRepo, Fleet, Member
from tests.harness import aptrepo, image, netns, nspawn
from tests.harness.dist import deb
from tests.harness.fixtures import MIRRORED_DEPENDENCIES, seed_host
from tests.harness.gitserver import GitDaemon
from tests.live_collector import CollectorProcess, collector_cli, free_port, token

BRIDGE = ("gafleet0", "10.213.9.1/24")
HOSTS = {"fleet1": "web", "fleet2": "web", "fleet3": "app", "fleet4": "app"}
SYSTEMD_HOST = "fleet4"
# What the roles install, as a site's mirror would carry it: `hello` for the example app role, memcached
# (and the library a minimal system lacks for it) for the real-world tier's memcached role.
ROLE_PACKAGES = ["hello", "memcached", "libevent-2.1-7"]


def fleet_inventory() -> str:
    groups: dict[str, dict[str, None]] = {}
    for host, group in HOSTS.items():
        groups.setdefault(group, {})[host] = None
    children = {group: {"hosts": hosts} for group, hosts in groups.items()}
    return ("# The fleet in a box: two web hosts and two app hosts (fleet4 boots under systemd).\n"
            + yaml.safe_dump({"all": {"children": {"base": {"children": children}}}}, sort_keys=False))


def agent_config(host: str, *, git_url: str, collector_url: str) -> str:
    return yaml.safe_dump({
        "host": host,
        "source": {"url": git_url, "ref": "main", "verify": "gpg",
                   "trusted_keys": "/etc/gitops-agent/trusted-keys", "timeout": "20s"},
        "mode": "enforce",
        "collector": {"url": collector_url, "token_file": "/etc/gitops-agent/token"},
        "schedule": {"interval": "30m", "poll": f"{POLL_S}s", "splay": "0s", "timeout": "10m"},
    }, sort_keys=False)


def _ssh_identity(tmp: Path) -> Path:
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-tests", "-f", str(key)],
                   check=True)
    config = tmp / "ssh_config"
    config.write_text(f"Host *\n  User root\n  IdentityFile {key}\n  StrictHostKeyChecking no\n",
                      encoding="utf-8")
    return config


def _agent_layer(image_root: Path, repo: Path, tmp: Path, *, ssh_pub: str, signing_pub: str) -> Path:
    """Install the agent package once in a throwaway host; its upper dir becomes every host's layer."""
    workdir = tmp / "layer"
    seed_host(workdir / "upper", repo)
    with netns.running_host("fleetseed", lower=image_root, workdir=workdir) as host:
        host.run("apt-get", "update", "-q")
        host.run("apt-get", "install", "-y", "-q", "--no-install-recommends", "gitops-agent")
        host.sh("install -d -m 0700 /root/.ssh && cat > /root/.ssh/authorized_keys && "
                "chmod 0600 /root/.ssh/authorized_keys", input_text=ssh_pub)
        host.sh("install -d -m 0755 /etc/gitops-agent/trusted-keys && "
                "cat > /etc/gitops-agent/trusted-keys/site-ops.asc", input_text=signing_pub)
    # The seed's sshd made itself a host key: every host must make its own, as real servers do.
    for key in (workdir / "upper/etc/ssh").glob("ssh_host_*"):
        key.unlink()
    return workdir / "upper"


def _config_repo(tmp: Path, git_base: Path) -> ConfigRepo:
    bare, work = git_base / "fleet.git", tmp / "config-work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    key = aptrepo.throwaway_key(tmp / "gpg", uid="Fleet Ops <ops@example.org>")
    shutil.copytree(image.REPO_ROOT / "playbooks", work / "playbooks")
    shutil.copytree(image.REPO_ROOT / "inventory", work / "inventory")
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    repo = ConfigRepo(work, bare, key.gnupghome, key.fingerprint)
    repo.git("remote", "add", "origin", str(bare))
    repo.commit({"inventory/hosts.yml": fleet_inventory()}, "fleet: example roles for fleet1-4")
    return repo


def _write_host_files(upper: Path, config: str, token: str) -> None:
    etc = upper / "etc/gitops-agent"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "agent.yaml").write_text(config, encoding="utf-8")
    (etc / "token").write_text(token + "\n", encoding="utf-8")
    (etc / "token").chmod(0o600)


@pytest.fixture(scope="session")
def fleet(fleet_root: None, dist: Path, image_root: Path, signing_key: aptrepo.SigningKey,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("fleet")
    debs = aptrepo.download_debs([*MIRRORED_DEPENDENCIES, *ROLE_PACKAGES], image.cache_dir() / "debs")
    repo_dir = aptrepo.build_apt_repo(tmp / "aptrepo", [deb(dist, "gitops-agent"), *debs], signing_key)
    ssh_config = _ssh_identity(tmp)
    config_repo = _config_repo(tmp, tmp / "git")
    signing_pub = subprocess.run(["gpg", "--armor", "--export", config_repo.fingerprint], check=True,
                                 capture_output=True, text=True,
                                 env=aptrepo.SigningKey(config_repo.gnupghome, "").env()).stdout
    layer = _agent_layer(image_root, repo_dir, tmp, ssh_pub=(tmp / "id_ed25519.pub").read_text(),
                         signing_pub=signing_pub)
    db = f"sqlite:///{tmp / 'collector.db'}"
    collector_cli(db, "migrate")
    reader = token(db, "--reader", OPERATOR)

    with contextlib.ExitStack() as stack:
        bridge = stack.enter_context(netns.Bridge(*BRIDGE))
        git_server = stack.enter_context(GitDaemon(tmp / "git", bridge.address))
        collector = CollectorProcess(db, free_port(), "--operator", OPERATOR, address=bridge.address).start()
        stack.callback(collector.stop)
        members: dict[str, Member] = {}
        for index, (name, group) in enumerate(HOSTS.items()):
            address = f"10.213.9.{11 + index}"
            workdir = tmp / name
            config = agent_config(name, git_url=git_server.url("fleet.git"), collector_url=collector.url)
            _write_host_files(workdir / "upper", config, token(db, name))
            member = Member(name, address, ("base", group), ssh_config)
            if name == SYSTEMD_HOST:
                netns_name = netns.add_netns(name, bridge, address)
                stack.callback(netns.del_netns, name)
                member.machine = stack.enter_context(nspawn.booted(
                    name, lower=[layer, image_root], upper=workdir / "upper", workdir=workdir / "nspawn",
                    netns=netns_name))
            else:
                member.host = netns.Host.start(name, lower=[layer, image_root], workdir=workdir,
                                               bridge=bridge, address=address)
                stack.callback(member.host.stop)
            members[name] = member
        members[SYSTEMD_HOST].machine.wait_booted(120)  # type: ignore[union-attr]
        print(f"\nfleet of {len(members)} hosts up in {time.monotonic() - started:.1f}s")
        yield Fleet(members, config_repo, git_server, collector, reader, layer=layer, bridge=bridge)
        stack.callback(image.remove_tree, tmp / SYSTEMD_HOST / "nspawn")
