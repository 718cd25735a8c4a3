"""Install the packages as an air-gapped site would: apt, a local signed repository, no route out; run the
agent, purge it, and see that nothing is left. Then boot the packaged units under real systemd."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import image, netns, nspawn
from tests.harness.dist import deb

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(1800)]

CONFIG_REPO = "/srv/config-repo"
INVENTORY = """\
all:
  children:
    web:
      hosts:
        {host}:
          ansible_connection: local
          ansible_python_interpreter: /usr/bin/python3
"""
PLAYBOOK = """\
- name: web role
  hosts: all
  gather_facts: false
  tasks:
    - name: motd says the host is managed
      ansible.builtin.copy:
        dest: /etc/motd.gitops
        content: "managed by gitops-agent\\n"
        mode: "0644"
"""
# Paths that may differ between before-install and after-purge: package manager bookkeeping and logs,
# and Ansible's per-user cache of the user who ran it (created by the run, not shipped by the package).
ALLOWED_LEFTOVERS = re.compile(r"^/(var/lib/dpkg|var/lib/apt|var/cache|var/log|root/\.ansible)(/|$)")
HEALTH_PROBE = """
import time, urllib.request
for attempt in range(100):
    try:
        print(urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=5).status)
        break
    except OSError as error:
        last = error
        time.sleep(0.3)
else:
    raise SystemExit(f"collector not answering: {last}")
"""
PROCESSES = (
    'for p in /proc/[0-9]*; do echo "${p#/proc/} $(cat $p/comm) $(tail -1 $p/cgroup)"; done; '
    'cg=$(systemctl show -p ControlGroup --value gitops-agent.service); '
    'for f in /sys/fs/cgroup$cg/cgroup.procs /sys/fs/cgroup/unified$cg/cgroup.procs; do '
    'echo "$f:"; cat $f; done; '
    'systemctl status --no-pager gitops-agent-restart.service'
)
SNAPSHOT = (
    "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \\) -prune -o "
    "-printf '%p %m %u\\n' | sort"
)


def make_config_repo(host: netns.Host) -> str:
    """A file:// Git repository inside the host with one role for this host; returns its commit."""
    host.sh(f"mkdir -p {CONFIG_REPO}/playbooks {CONFIG_REPO}/inventory")
    host.run("tee", f"{CONFIG_REPO}/inventory/hosts.yml", input_text=INVENTORY.format(host=host.name))
    host.run("tee", f"{CONFIG_REPO}/playbooks/web.yml", input_text=PLAYBOOK)
    host.sh(f"cd {CONFIG_REPO} && git init -q -b main && git add -A && "
            "git -c user.name=ops -c user.email=ops@example.org commit -q -m 'web role'")
    return host.run("git", "-C", CONFIG_REPO, "rev-parse", "HEAD").stdout.strip()


def agent_config(host: str, *, state_dir: str = "/var/lib/gitops-agent") -> str:
    return (f"host: {host}\nsource:\n  url: file://{CONFIG_REPO}\n  ref: main\nmode: detect\n"
            f"state_dir: {state_dir}\nschedule:\n  interval: 30m\n  poll: 1m\n  splay: 0s\n")


def snapshot(host: netns.Host) -> set[str]:
    return set(host.sh(SNAPSHOT).stdout.splitlines())


def test_no_route_out_and_signed_repo_only(make_host: object) -> None:
    host = make_host("pkg0", 0)  # type: ignore[operator]
    routes = host.run("ip", "route").stdout
    assert "default" not in routes, routes
    host.run("apt-get", "update", "-q")
    # apt refuses the repository if its key is not the one in Signed-By.
    host.sh("sed -i 's|Signed-By: .*|Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg|' "
            "/etc/apt/sources.list.d/gitops-agent.sources")
    refused = host.run("apt-get", "update", "-q", check=False)
    assert "NO_PUBKEY" in refused.stdout + refused.stderr or refused.returncode != 0


def test_agent_install_version_check_run_purge(make_host: object, record_property: object) -> None:
    host = make_host("pkg1", 1)  # type: ignore[operator]
    host.run("apt-get", "update", "-q")
    host.run("apt-get", "install", "-y", "-q", "python3-apt", "gpg")  # dependencies, from the mirror
    commit = make_config_repo(host)
    host.run("tee", "/root/agent-test.yaml", input_text=agent_config(host.name))
    before = snapshot(host)

    started = time.monotonic()
    host.run("apt-get", "install", "-y", "-q", "--no-install-recommends", "gitops-agent")
    install_s = time.monotonic() - started
    record_property("agent_install_s", round(install_s, 1))  # type: ignore[operator]
    print(f"\ngitops-agent: apt-get install took {install_s:.1f}s")

    version = host.run("gitops-agent", "version").stdout
    assert re.search(r"\b0\.\d+\.\d+", version), version
    assert host.run("gitops-agent", "--version").stdout == version
    # The man page and the completions are installed and work: the page names every command, and bash
    # completes the commands after sourcing the completion file the way bash-completion does.
    page = host.run("sh", "-c", "zcat /usr/share/man/man1/gitops-agent.1.gz").stdout
    assert ".SH NAME" in page and "gitops\\-agent doctor" in page, page[:500]
    completed = host.run("bash", "-c", ". /usr/share/bash-completion/completions/gitops-agent && "
                         "COMP_WORDS=(gitops-agent st) COMP_CWORD=1 && "
                         "$(complete -p gitops-agent | sed 's/.* -F \\([^ ]*\\) .*/\\1/') && "
                         "echo \"${COMPREPLY[@]}\"").stdout
    assert completed.split() == ["status"], completed
    assert host.run("sh", "-c", "head -n 1 /usr/share/zsh/vendor-completions/_gitops-agent").stdout.startswith(
        "#compdef gitops-agent")
    assert host.run("stat", "-c", "%a %U", "/var/lib/gitops-agent").stdout.split() == ["700", "root"]
    assert "/etc/gitops-agent/agent.yaml" in host.run("dpkg-query", "--showformat=${Conffiles}", "--show",
                                                      "gitops-agent").stdout
    verify = host.run("systemd-analyze", "verify", "/lib/systemd/system/gitops-agent.service", check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    # Debian's apt bindings (and only they) are importable by the bundled Python: Ansible's apt module
    # then needs no re-exec under /usr/bin/python3, which the mitogen strategy cannot do.
    bindings = host.run("/opt/gitops-agent/bin/python3", "-c",
                        "import apt, apt_pkg, sys; print(apt_pkg.__file__); import yaml; print(yaml.__file__)")
    assert bindings.stdout.split() == ["/opt/gitops-agent/lib/python3.11/system-apt/apt_pkg.cpython-311-x86_64-linux-gnu.so",
                                       "/opt/gitops-agent/lib/python3.11/site-packages/yaml/__init__.py"], bindings.stdout

    run = host.run("gitops-agent", "run", "--check", "--json", "--config", "/root/agent-test.yaml",
                   check=False, timeout_s=900)
    assert run.returncode in (0, 2), f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    report = json.loads(run.stdout)
    assert report["source"]["commit"] == commit
    assert report["status"] in ("in_sync", "drifted"), report
    assert not host.root_path("/etc/motd.gitops").exists(), "a check run changed the host"

    host.run("apt-get", "purge", "-y", "-q", "gitops-agent")
    assert "gitops-agent" not in host.run("dpkg", "-l").stdout
    after = snapshot(host)
    changed = sorted(line for line in before ^ after if not ALLOWED_LEFTOVERS.match(line.split(" ")[0]))
    assert not changed, "left behind or changed by install+purge:\n" + "\n".join(changed[:50])


def test_collector_install_hardened_purge(make_host: object, record_property: object) -> None:
    host = make_host("pkg2", 2)  # type: ignore[operator]
    host.run("apt-get", "update", "-q")
    before = snapshot(host)
    started = time.monotonic()
    host.run("apt-get", "install", "-y", "-q", "--no-install-recommends", "gitops-collector")
    record_property("collector_install_s", round(time.monotonic() - started, 1))  # type: ignore[operator]
    assert "gitops-collector" in host.run("getent", "passwd", "gitops-collector").stdout
    assert host.run("stat", "-c", "%a %U", "/var/lib/gitops-collector").stdout.split() == \
        ["750", "gitops-collector"]
    assert re.search(r"\b0\.\d+\.\d+", host.run("gitops-collector", "--version").stdout)
    for doc in ("/usr/share/man/man1/gitops-collector.1.gz", "/usr/share/zsh/vendor-completions/_gitops-collector",
                "/usr/share/bash-completion/completions/gitops-collector"):
        assert host.run("test", "-s", doc, check=False).returncode == 0, doc
    completes = host.run("bash", "-c", "source /usr/share/bash-completion/completions/gitops-collector; "
                         "COMP_WORDS=(gitops-collector to); COMP_CWORD=1; _shtab_gitops_collector; "
                         "echo ${COMPREPLY[*]}")
    assert completes.stdout.split() == ["token"], completes.stdout + completes.stderr
    # a read command on a fresh install: one line, exit 66, and no database made at the default path
    listing = host.run("gitops-collector", "token", "list", check=False)
    assert listing.returncode == 66 and listing.stderr.count("\n") == 1, listing.stderr
    assert host.run("test", "-e", "/var/lib/gitops-collector/collector.db", check=False).returncode == 1
    unit = "/lib/systemd/system/gitops-collector.service"
    verify = host.run("systemd-analyze", "verify", unit, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = host.run("systemd-analyze", "security", "--offline=true", "--no-pager", unit, check=False)
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert exposure, security.stdout + security.stderr
    record_property("collector_exposure", exposure.group(1))  # type: ignore[operator]
    print(f"\ngitops-collector.service exposure: {exposure.group(1)}")
    assert float(exposure.group(1)) <= 2.5, security.stdout

    host.run("apt-get", "purge", "-y", "-q", "gitops-collector")
    after = snapshot(host)
    # Debian keeps system users on purge (a reused UID could own old files): only the account stays.
    account = re.compile(r"^/etc/(passwd|group|shadow|gshadow|subuid|subgid)-? ")
    changed = sorted(line for line in before ^ after
                     if not ALLOWED_LEFTOVERS.match(line.split(" ")[0]) and not account.match(line))
    assert not changed, "left behind or changed by install+purge:\n" + "\n".join(changed[:50])


def _cgroup_procs(machine: nspawn.Machine, unit: str) -> str:
    cgroup = machine.run("systemctl", "show", "-p", "ControlGroup", "--value", unit).stdout.strip()
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup"):
        if machine.run("test", "-w", f"{root}{cgroup}/cgroup.procs").returncode == 0:
            return f"{root}{cgroup}/cgroup.procs"
    raise AssertionError(f"no writable cgroup.procs for {unit} ({cgroup})")


def test_units_boot_under_systemd_and_survive_self_upgrade(make_host: object, image_root: Path,
                                                           dist: Path, tmp_path: Path) -> None:
    host = make_host("boot1", 3)  # type: ignore[operator]
    host.run("apt-get", "update", "-q")
    make_config_repo(host)
    host.run("apt-get", "install", "-y", "-q", "--no-install-recommends", "gitops-agent", "gitops-collector")
    host.run("tee", "/etc/gitops-agent/agent.yaml", input_text=agent_config(host.name))
    host.run("cp", f"/srv/gitops-repo/pool/main/{deb(dist, 'gitops-agent').name}", "/root/agent.deb")
    upper = host.upper
    host.stop()  # the installed tree stays in its upper dir; boot it under systemd

    subprocess.run(["ip", "netns", "add", "ga-boot1"], check=True)
    subprocess.run(["ip", "-n", "ga-boot1", "link", "set", "lo", "up"], check=True)
    try:
        with nspawn.booted("boot1", lower=image_root, upper=upper, workdir=tmp_path / "nspawn",
                           netns="ga-boot1") as machine:
            machine.wait_booted(90)
            agent = machine.wait_for_unit("gitops-agent.service", 120)  # Type=notify: active = READY=1
            machine.wait_for_unit("gitops-collector.service", 60)
            health = machine.run("/opt/gitops-collector/bin/python3", "-c", HEALTH_PROBE, timeout_s=60)
            assert health.stdout.strip() == "200", health.stdout + health.stderr

            # The agent upgrades its own package from inside its service: dpkg must finish, and the
            # service must be restarted afterwards from outside its cgroup.
            procs = _cgroup_procs(machine, "gitops-agent.service")
            upgrade = machine.run("/bin/sh", "-c", f"echo $$ > {procs} && exec dpkg -i /root/agent.deb",
                                  timeout_s=300)
            assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
            deadline = time.monotonic() + 120
            state = machine.unit_state("gitops-agent.service")
            while time.monotonic() < deadline and state.get("MainPID") in (agent["MainPID"], "0"):
                time.sleep(1)
                state = machine.unit_state("gitops-agent.service")
            assert state.get("MainPID") != agent["MainPID"], (
                f"not restarted after self-upgrade: {state}\n--- dpkg\n{upgrade.stdout}\n"
                f"--- journal\n{machine.run('journalctl', '--no-pager', '-n', '30').stdout}\n"
                f"--- processes\n{machine.run('/bin/sh', '-c', PROCESSES).stdout}")
            machine.wait_for_unit("gitops-agent.service", 120)
            assert machine.run("dpkg", "--audit").stdout.strip() == ""

            # `serve --writer-process`, which the shipped collector.env turns on, under the unit's sandbox:
            # the child is spawned and opens the database before the first answer (after a restart too),
            # and a stop ends the whole unit cleanly
            env = machine.run("cat", "/etc/gitops-collector/collector.env", check=True).stdout
            assert "\nGITOPS_COLLECTOR_SERVE_OPTIONS=--writer-process\n" in env, env
            machine.run("systemctl", "restart", "gitops-collector.service", check=True)
            machine.wait_for_unit("gitops-collector.service", 60)
            health = machine.run("/opt/gitops-collector/bin/python3", "-c", HEALTH_PROBE, timeout_s=60)
            assert health.stdout.strip() == "200", health.stdout + health.stderr
            pids = machine.run("cat", _cgroup_procs(machine, "gitops-collector.service")).stdout.split()
            commands = [machine.run("cat", f"/proc/{pid}/cmdline").stdout.replace("\0", " ") for pid in pids]
            assert any("multiprocessing.spawn" in c for c in commands), commands
            machine.run("systemctl", "stop", "gitops-collector.service", check=True, timeout_s=60)
            stopped = machine.unit_state("gitops-collector.service")
            assert (stopped.get("ActiveState"), stopped.get("Result")) == ("inactive", "success"), (
                f"{stopped}\n--- journal\n{machine.journal('gitops-collector.service')[-3000:]}")
    finally:
        subprocess.run(["ip", "netns", "del", "ga-boot1"], check=False)
        image.remove_tree(tmp_path / "nspawn")
