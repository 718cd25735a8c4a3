"""End-to-end on a fleet in a box: four real hosts, a Git server, a collector (tests/fleet/conftest.py).

The scenarios run in order on one fleet, as an operator would live through them; each states what it
starts from. fleet1-3 run `gitops-agent run` on demand (as cron would); fleet4 runs the packaged unit
under systemd and acts on its own. Every assertion on a host is made over SSH (testinfra), and every
assertion on what was reported is made on the collector's API.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from tests.fleet.fleet import POLL_S, AgentRun, Fleet

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(900)]

MOTD = "{host}\nManaged by gitops-agent. Local edits are reverted.\n"
# The systemd host runs Ansible under the unit's CPUQuota=50%, beside three other hosts' runs.
DAEMON_RUN_BUDGET_S = 240


def corrective(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for item in report["drift"] if item["kind"] == "corrective"]


def failed_tasks(report: dict[str, Any]) -> str:
    apply = report.get("apply") or {}
    return " | ".join([e["message"] for e in report["errors"]]
                      + [f"{t['task']}: {t['message']}" for t in apply.get("failed_tasks", [])])


def assert_runs(runs: dict[str, AgentRun], *, exit_code: int, status: str, commit: str) -> None:
    for run in runs.values():
        summary = f"{run.host}: exit {run.exit_code}, {run.report['status']}: {failed_tasks(run.report)}"
        assert (run.exit_code, run.report["status"]) == (exit_code, status), summary + "\n" + run.stderr[-3000:]
        assert run.report["source"]["commit"] == commit, summary


def test_1_fresh_fleet_converges_to_the_pushed_commit(fleet: Fleet) -> None:
    commit = fleet.repo.git("rev-parse", "HEAD")
    runs = fleet.run_agents(fleet.on_demand)
    assert_runs(runs, exit_code=0, status="corrected", commit=commit)
    assert all(r.report["source"]["signature"]["status"] == "verified" for r in runs.values())
    # The app role has `become: true` and the hosts have no sudo: mitogen (the default strategy) skipped
    # the escalation to the user already running, as Ansible does, with no fallback to linear (issue 13).
    assert not any(m.ssh().exists("sudo") for m in fleet.members.values())
    assert {h: r.report["warnings"] for h, r in runs.items()} == {h: [] for h in runs}
    daemon = fleet.daemon_run_on(commit, DAEMON_RUN_BUDGET_S)
    assert daemon["status"] == "corrected", daemon

    for member in fleet.members.values():
        host = member.ssh()
        assert host.file("/etc/motd").content_string == MOTD.format(host=member.name)
        assert host.file("/etc/sysctl.d/60-gitops.conf").mode == 0o644
        is_web = "web" in member.groups
        assert host.file("/etc/gitops-demo/web/web.env").exists is is_web, member.name
        assert host.package("hello").is_installed is not is_web, member.name
        assert host.user("gitops-app").exists is not is_web, member.name
    app = fleet.daemon_host.ssh()  # the role's service runs where systemd does
    assert app.service("gitops-app.service").is_running and app.service("gitops-app.service").is_enabled
    assert app.socket("tcp://127.0.0.1:8081").is_listening

    hosts = {h["host"]: h for h in fleet.api("/hosts")["items"]}
    assert set(hosts) == set(fleet.members)
    assert {(h["commit"], h["status"]) for h in hosts.values()} == {(commit, "corrected")}
    rollout = fleet.api(f"/commits/{commit}")["summary"]
    assert (rollout["running"], rollout["converged"], rollout["not_reached"]) == (4, 4, 0), rollout


def test_2_a_commit_to_one_role_changes_only_its_hosts(fleet: Fleet) -> None:
    web, others = fleet.with_group("web"), [m for m in fleet.on_demand if "web" not in m.groups]
    untouched = {m.name: m.ssh().file("/etc/gitops-app/app.conf").mtime for m in fleet.with_group("app")}
    web_vars = fleet.repo.read("inventory/group_vars/web.yml")
    commit = fleet.repo.commit({"inventory/group_vars/web.yml": web_vars.replace(
        "web_worker_count: 4", "web_worker_count: 6")}, "web: six workers")

    first = fleet.run_agents(web)
    assert_runs(first, exit_code=0, status="corrected", commit=commit)
    for run in first.values():
        assert sorted((d["task"], d["kind"]) for d in run.report["drift"]) == [
            ("Site configuration", "intentional"), ("Worker count in the environment file", "intentional")]
    midway = fleet.api(f"/commits/{commit}")
    converged = {h["host"] for h in midway["hosts"]["items"] if h["status"] in ("in_sync", "corrected")}
    assert {m.name for m in web} <= converged, midway

    rest = fleet.run_agents(others)
    assert_runs(rest, exit_code=0, status="in_sync", commit=commit)
    assert all(r.report["drift"] == [] for r in rest.values())
    assert fleet.daemon_run_on(commit, DAEMON_RUN_BUDGET_S)["status"] == "in_sync"

    for member in web:
        assert member.ssh().file("/etc/gitops-demo/web/web.env").content_string == "WORKERS=6\n"
    for member in fleet.with_group("app"):
        assert member.ssh().file("/etc/gitops-app/app.conf").mtime == untouched[member.name]
    summary = fleet.api(f"/commits/{commit}")["summary"]
    assert (summary["running"], summary["converged"]) == (4, 4), summary


def test_3_a_hand_edit_is_reported_in_detect_mode_and_corrected_in_enforce_mode(fleet: Fleet) -> None:
    member = fleet.members["fleet1"]
    commit = fleet.repo.git("rev-parse", "HEAD")
    member.run("/bin/sh", "-c", "echo 'hotfix by hand' >> /etc/motd")
    member.run("sed", "-i", "s/^mode: enforce$/mode: detect/", "/etc/gitops-agent/agent.yaml")

    detect = fleet.run_agents([member])["fleet1"]
    assert (detect.exit_code, detect.report["status"], detect.report["mode"]) == (2, "drifted", "detect")
    [item] = corrective(detect.report)
    assert item["task"] == "Message of the day"
    [diff] = item["diffs"]
    assert diff["path"] == "/etc/motd" and "hotfix by hand" in diff["before"]
    assert "hotfix by hand" not in diff["after"]
    assert "hotfix by hand" in member.ssh().file("/etc/motd").content_string  # left alone

    member.run("sed", "-i", "s/^mode: detect$/mode: enforce/", "/etc/gitops-agent/agent.yaml")
    enforce = fleet.run_agents([member])["fleet1"]
    assert_runs({"fleet1": enforce}, exit_code=0, status="corrected", commit=commit)
    assert [d["task"] for d in corrective(enforce.report)] == ["Message of the day"]
    assert member.ssh().file("/etc/motd").content_string == MOTD.format(host="fleet1")

    stored = fleet.api(f"/runs/{detect.report['run_id']}")["report"]
    assert corrective(stored)[0]["diffs"][0]["before"] == diff["before"]
    assert fleet.api("/hosts/fleet1")["status"] == "corrected"


def test_4_reports_wait_while_the_collector_is_down_and_arrive_once(fleet: Fleet) -> None:
    commit = fleet.repo.git("rev-parse", "HEAD")
    fleet.collector.stop()
    try:
        during = fleet.run_agents(fleet.on_demand)
        again = fleet.run_agents(fleet.on_demand[:1])
    finally:
        fleet.collector.start()
    assert_runs(during, exit_code=0, status="in_sync", commit=commit)
    assert_runs(again, exit_code=0, status="in_sync", commit=commit)
    for run in during.values():
        assert "1 report(s) wait in the outbox" in run.stderr, run.stderr
    assert "2 report(s) wait in the outbox" in again["fleet1"].stderr

    # The collector is back: fleet1's next run delivers its backlog with its own report; an operator
    # flushes the others by hand.
    after = fleet.run_agents(fleet.on_demand[:1])
    assert "outbox" not in after["fleet1"].stderr, after["fleet1"].stderr
    for member in fleet.on_demand[1:]:
        flushed = member.run("gitops-agent", "outbox", "--flush")
        assert "delivered 1," in flushed.stdout, flushed.stdout
    for member in fleet.on_demand:
        assert member.run("gitops-agent", "outbox", check=False).returncode == 0  # nothing waits
        stored = [r["run_id"] for r in fleet.runs_of(member.name)]
        assert len(stored) == len(set(stored)), f"{member.name}: a report was stored twice"
        assert sorted(stored) == sorted(fleet.ledger[member.name]), f"{member.name}: reports missing"


def test_5_hosts_keep_their_commit_while_the_git_server_is_down(fleet: Fleet) -> None:
    commit = fleet.repo.git("rev-parse", "HEAD")
    edited = fleet.members["fleet3"]
    fleet.git_server.stop()
    try:
        edited.run("/bin/sh", "-c", "echo 'greeting = edited' >> /etc/gitops-app/app.conf")
        runs = fleet.run_agents(fleet.on_demand)
    finally:
        fleet.git_server.start()
    # Each drift check ran against the last verified commit (and corrected fleet3's edit); each report
    # says the source could not be reached.
    for name, run in runs.items():
        expected = "corrected" if name == edited.name else "in_sync"
        assert (run.report["source"]["commit"], run.report["status"]) == (commit, expected), run.report
        fetch = " | ".join(e["message"] for e in run.report["errors"] if e["phase"] == "fetch")
        assert "every source is unreachable" in fetch and fleet.git_server.address in fetch, fetch
        stored = fleet.api(f"/runs/{run.report['run_id']}")["report"]
        assert stored["errors"] == run.report["errors"]
    assert "greeting = edited" not in edited.ssh().file("/etc/gitops-app/app.conf").content_string


def test_6_a_failing_task_fails_its_role_only(fleet: Fleet) -> None:
    playbook = fleet.repo.read("playbooks/app.yml")
    broken = playbook + (
        "\n    - name: Application plugin configuration\n"
        "      ansible.builtin.copy:\n"
        "        src: files/gitops-app-plugin.conf  # never committed: this task fails\n"
        "        dest: /etc/gitops-app/plugin.conf\n"
        "        mode: \"0644\"\n")
    commit = fleet.repo.commit({"playbooks/app.yml": broken}, "app: plugin configuration")

    runs = fleet.run_agents(fleet.on_demand)
    for name, run in runs.items():
        if "app" in fleet.members[name].groups:
            assert (run.exit_code, run.report["status"]) == (1, "failed"), run.report
            assert "Application plugin configuration" in failed_tasks(run.report)
            assert not fleet.members[name].ssh().file("/etc/gitops-app/plugin.conf").exists
        else:
            assert_runs({name: run}, exit_code=0, status="in_sync", commit=commit)
    daemon = fleet.daemon_run_on(commit, DAEMON_RUN_BUDGET_S)
    assert daemon["status"] == "failed", daemon
    failing = {h["host"] for h in fleet.api("/hosts", status="failed")["items"]}
    assert failing == {m.name for m in fleet.with_group("app")}


def test_7_an_unsigned_commit_is_refused_fleet_wide(fleet: Fleet) -> None:
    before = fleet.repo.git("rev-parse", "HEAD")
    web_vars = fleet.repo.read("inventory/group_vars/web.yml")
    unsigned = fleet.repo.commit({"inventory/group_vars/web.yml": web_vars.replace(
        "web_worker_count: 6", "web_worker_count: 9")}, "web: nine workers (unsigned)", signed=False)

    runs = fleet.run_agents(fleet.on_demand)
    for run in runs.values():
        report = run.report
        assert run.exit_code == 1 and report["phase_reached"] == "verify", report
        assert report["source"]["signature"]["status"] == "unsigned", report["source"]
        assert report["drift"] == [] and report["apply"] is None, report
    for member in fleet.with_group("web"):
        assert member.ssh().file("/etc/gitops-demo/web/web.env").content_string == "WORKERS=6\n"

    def daemon_refused() -> dict[str, Any] | None:
        runs_ = [r for r in fleet.runs_of(fleet.daemon_host.name) if r["phase_reached"] == "verify"]
        return runs_[0] if runs_ else None

    refused = fleet.wait_for("the systemd host to refuse the unsigned commit", daemon_refused,
                             POLL_S + 60)
    assert refused["status"] in ("error", "failed"), refused
    hosts = fleet.api("/hosts")["items"]
    assert all(h["commit"] in (before, unsigned) and h["phase_reached"] == "verify" for h in hosts), hosts


def test_8_the_systemd_daemon_picks_up_a_new_commit_within_poll_and_run_time(fleet: Fleet) -> None:
    app_vars = fleet.repo.read("inventory/group_vars/app.yml")
    pushed_at = time.time()
    # Signed by ops: reverts the unsigned change and the broken task, and gives the app a new greeting.
    commit = fleet.repo.commit({
        "playbooks/app.yml": fleet.repo.git("show", "HEAD~2:playbooks/app.yml") + "\n",
        "inventory/group_vars/web.yml": fleet.repo.git("show", "HEAD~1:inventory/group_vars/web.yml") + "\n",
        "inventory/group_vars/app.yml": app_vars.replace("hello from gitops-app", "hello from commit 8"),
    }, "app: drop the plugin, new greeting; revert the unsigned change")

    run = fleet.daemon_run_on(commit, POLL_S + DAEMON_RUN_BUDGET_S)
    started = datetime.fromisoformat(run["started_at"]).timestamp()
    finished = datetime.fromisoformat(run["finished_at"]).timestamp()
    print(f"\nfleet4: picked up {commit[:10]} {started - pushed_at:.1f}s after the push, "
          f"converged {finished - pushed_at:.1f}s after it")
    assert run["trigger"] == "new_commit" and run["status"] == "corrected", run
    assert started - pushed_at <= POLL_S + 15, "the daemon did not notice the commit within its poll interval"
    host = fleet.daemon_host.ssh()
    assert "greeting = hello from commit 8" in host.file("/etc/gitops-app/app.conf").content_string
    assert host.service("gitops-app.service").is_running
    unit = fleet.daemon_host.machine.unit_state("gitops-agent.service")  # type: ignore[union-attr]
    assert (unit["ActiveState"], unit["NRestarts"]) == ("active", "0"), unit  # never restarted or killed
    watchdog = fleet.daemon_host.run("systemctl", "show", "-p", "WatchdogUSec", "--value", "gitops-agent.service")
    assert watchdog.stdout.strip() == "15min"  # and it kept pinging through every scenario
