"""Rollouts on the fleet in a box (docs/rollout.md): waves, the automatic halt and approvals, with real hosts.

Runs after tests/fleet/test_fleet.py, on the same four hosts, as two stories that commit a `rollout.yml`
to the config repository:

    canary  groups [web], share 50%   one web host (which one: the stable hash of the host names)
    early   groups [web]              the other web host, 5 s after the canary wave converged
    rest                              fleet3 and fleet4 (role app: approval required), 5 s after early

1. A commit whose new task fails when applied (check mode cannot see it: `validate` runs only when the
   file is written) fails on the canary; the collector halts its rollout; the other hosts check it, do not
   apply it (files unchanged) and report why (`halted: wave canary: 1 of 1 failed ...`).
2. The next commit goes canary -> early -> rest in that order: the early host waits while the canary has
   not converged, then applies; the app hosts wait for the approval of their plan, which an operator
   gives on the commit page in a real browser (Chromium through Playwright); fleet4 then applies. A hand
   edit on fleet3 after the approval changes its plan, so fleet3 waits for a new approval, gets it (the
   operators' API), and applies.

fleet1-3 run `gitops-agent run` on demand; fleet4's daemon checks each new commit on its own (and runs
the requested cycles). Not tested here (not built yet): a host held on a new commit enforcing its last
converged commit in the same cycle. The last commit keeps its rollout.yml: later fleet tests only check.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from agent.rollout import assign_waves, parse_policy
from tests.collector.test_ui_browser import CHROMIUM_FLAGS, chromium_path, shot
from tests.fleet.fleet import OPERATOR, AgentRun, Fleet, Member

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(900)]

SOAK_S = 5
ROLLOUT = f"""\
# Waves of the fleet in a box: one web host, the other web host, then the app hosts (approval required).
version: 1
splay: 0s
waves:
  - name: canary
    groups: [web]
    share: 50%
  - name: early
    groups: [web]
    soak: {SOAK_S}s
  - name: rest
    soak: {SOAK_S}s
approve:
  roles: [app]
"""
BANNER = "Managed by gitops-agent. Local edits are reverted."
# A file whose validator refuses it: `ansible.builtin.copy` runs `validate` only when it writes the file,
# so the check reports the file as drift and the apply fails.
FAILING_TASK = """
    - name: Worker limits
      ansible.builtin.copy:
        dest: "{{ target_root }}/etc/gitops-demo/web/limits.conf"
        content: "max_workers = {{ web_worker_count }}\\n"
        mode: "0644"
        validate: /bin/false %s
"""


def waves(fleet: Fleet) -> dict[str, list[Member]]:
    """Members by wave, as every host computes them (agent.rollout.assign_waves)."""
    assignment = assign_waves(parse_policy(ROLLOUT), {m.name: frozenset(m.groups) for m in fleet.members.values()})
    by_wave: dict[str, list[Member]] = {}
    for name, wave in sorted(assignment.items()):
        by_wave.setdefault(wave, []).append(fleet.members[name])
    return by_wave


def rollout_of(run: AgentRun) -> dict[str, Any]:
    block = run.report.get("rollout")
    assert block is not None, f"{run.host}: no rollout block in the report: {run.report}"
    return dict(block)


def held(run: AgentRun, commit: str, gate: str, reason: str) -> None:
    """The host checked commit, found drift, and the gate held it: nothing applied, the report says why."""
    block = rollout_of(run)
    summary = f"{run.host}: exit {run.exit_code}, {run.report['status']}, rollout {block}"
    assert run.report["source"]["commit"] == commit, summary
    assert (run.report["status"], run.report["apply"]) == ("drifted", None), summary
    assert block["gate"] == gate and block["reason"].startswith(reason), summary


def applied(run: AgentRun, commit: str) -> None:
    block = rollout_of(run)
    errors = " | ".join(e["message"] for e in run.report["errors"])
    summary = f"{run.host}: exit {run.exit_code}, {run.report['status']}, rollout {block}, errors {errors}"
    assert (run.exit_code, run.report["status"], run.report["source"]["commit"]) == (0, "corrected", commit), \
        summary + "\n" + run.stderr[-3000:]
    assert block["gate"] == "allowed", summary


def files(member: Member) -> dict[str, str | None]:
    """The managed files the stories change, as read over SSH (None: absent)."""
    host = member.ssh()
    paths = ["/etc/motd", "/etc/gitops-demo/web/web.env", "/etc/gitops-demo/web/limits.conf",
             "/etc/gitops-app/app.conf"]
    return {p: host.file(p).content_string if host.file(p).exists else None for p in paths}


def control(fleet: Fleet, commit: str) -> dict[str, Any]:
    return dict(fleet.api(f"/rollouts/{commit}/control"))


def test_1_a_commit_failing_on_the_canary_halts_and_never_reaches_the_other_hosts(fleet: Fleet) -> None:
    by_wave = waves(fleet)
    [canary], [early] = by_wave["canary"], by_wave["early"]
    assert {m.name for m in by_wave["rest"]} == {"fleet3", "fleet4"}
    others = [early, *by_wave["rest"]]
    before = {m.name: files(m) for m in others}
    web_vars = fleet.repo.read("inventory/group_vars/web.yml")
    all_vars = fleet.repo.read("inventory/group_vars/all.yml")
    commit = fleet.repo.commit({
        "rollout.yml": ROLLOUT,
        "inventory/group_vars/all.yml": all_vars.replace(BANNER, "Managed by gitops-agent (bad rollout)."),
        "inventory/group_vars/web.yml": web_vars.replace("web_worker_count: 6", "web_worker_count: 8"),
        "playbooks/web.yml": fleet.repo.read("playbooks/web.yml") + FAILING_TASK,
    }, "web: worker limits (the validator refuses them)")

    first = fleet.run_agents([canary])[canary.name]
    assert (first.exit_code, first.report["status"]) == (1, "failed"), first.report
    assert "Worker limits" in str(first.report["apply"]["failed_tasks"]), first.report["apply"]
    assert rollout_of(first)["wave"] == "canary" and rollout_of(first)["gate"] == "allowed"

    runs = fleet.run_agents(others)
    for run in runs.values():
        held(run, commit, "halted", "halted: wave canary: 1 of 1 failed, at most 0 allowed")
        assert rollout_of(run)["enforcing_commit"] is not None, run.report["rollout"]
    for member in others:
        assert files(member) == before[member.name], f"{member.name}: the halted commit changed files"

    state = control(fleet, commit)
    halted = state["answer"]["halted"]
    assert (halted["by"], halted["wave"]) == ("collector", "canary"), halted
    assert [(w["name"], w["size"], w["converged"], w["failed"]) for w in state["answer"]["waves"]] == [
        ("canary", 1, 0, 1), ("early", 1, 0, 0), ("rest", 2, 0, 0)], state["answer"]["waves"]
    page = httpx.get(f"{fleet.collector.url}/commits/{commit}", timeout=30,
                     headers={"Authorization": f"Bearer {fleet.reader_token}"})
    assert page.status_code == 200 and 'id="rollout"' in page.text, page.text[:2000]
    assert "Halted" in page.text and "wave canary: 1 of 1 failed, at most 0 allowed" in page.text


def test_2_a_good_commit_goes_wave_by_wave_and_an_approval_required_role_waits_for_its_plan(
        fleet: Fleet) -> None:
    by_wave = waves(fleet)
    [canary], [early] = by_wave["canary"], by_wave["early"]
    fleet3, fleet4 = fleet.members["fleet3"], fleet.members["fleet4"]
    playbook = fleet.repo.read("playbooks/web.yml").replace("        validate: /bin/false %s\n", "")
    all_vars = fleet.repo.read("inventory/group_vars/all.yml")
    app_vars = fleet.repo.read("inventory/group_vars/app.yml")
    greeting = app_vars.split("app_greeting: ", 1)[1].splitlines()[0].strip('"')
    commit = fleet.repo.commit({
        "playbooks/web.yml": playbook,
        "inventory/group_vars/all.yml": all_vars.replace("(bad rollout)", "(in waves)"),
        "inventory/group_vars/app.yml": app_vars.replace(greeting, "hello in waves"),
    }, "web: worker limits without the validator; app: greeting in waves")

    # The canary applies; the early host checks meanwhile and waits for it.
    first = fleet.run_agents([canary, early])
    applied(first[canary.name], commit)
    held(first[early.name], commit, "waiting", "waiting: wave canary 0/1 converged, needs 100%")
    daemon = fleet.daemon_run_on(commit, 300)  # fleet4 checked the new commit on its own: rest waits
    assert daemon["status"] == "drifted", daemon
    assert fleet.api(f"/runs/{daemon['run_id']}")["report"]["rollout"]["gate"] == "waiting", daemon

    # The early wave opens SOAK_S after the canary converged (on a fast machine fleet4's check above can
    # take less than that)
    canary_done = datetime.fromisoformat(first[canary.name].report["finished_at"]).timestamp()
    time.sleep(max(0.0, canary_done + SOAK_S + 1 - time.time()))
    second = fleet.run_agents([early])[early.name]
    applied(second, commit)

    # The rest wave opens SOAK_S after early converged; fleet3 then waits for the approval of its plan.
    early_done = datetime.fromisoformat(second.report["finished_at"]).timestamp()
    time.sleep(max(0.0, early_done + SOAK_S + 1 - time.time()))
    waiting = fleet.run_agents([fleet3])[fleet3.name]
    plan = rollout_of(waiting)["plan_digest"]
    held(waiting, commit, "waiting", f"waiting: approval of plan {plan[:12]}")
    assert "hello in waves" not in (files(fleet3)["/etc/gitops-app/app.conf"] or "")

    state = control(fleet, commit)
    pending = {p["plan_digest"]: p["hosts"] for p in state["pending_plans"]}
    assert plan in pending and "fleet3" in pending[plan], pending
    assert {h for hosts in pending.values() for h in hosts} == {"fleet3", "fleet4"}, pending
    approve_in_the_browser(fleet, commit, sorted(pending))
    assert set(fleet.api(f"/rollouts/{commit}/control")["answer"]["approved_plans"]) == set(pending)

    # After the approval, a hand edit on fleet3 changes its plan: fleet3 needs a new approval, fleet4 not.
    fleet3.run("/bin/sh", "-c", "echo 'greeting = edited by hand' >> /etc/gitops-app/app.conf")
    third = fleet.run_agents([fleet3, fleet4])
    applied(third[fleet4.name], commit)
    changed = rollout_of(third[fleet3.name])["plan_digest"]
    assert changed != plan
    held(third[fleet3.name], commit, "waiting", f"waiting: approval of plan {changed[:12]}")
    approval = httpx.post(f"{fleet.collector.url}/api/v1/rollouts/{commit}/approvals", timeout=30,
                          json={"plan_digests": [changed], "reason": "fleet3's hand edit goes too"},
                          headers={"Authorization": f"Bearer {fleet.reader_token}"})
    assert approval.status_code == 201 and approval.json()["approved"] == [changed], approval.text
    applied(fleet.run_agents([fleet3])[fleet3.name], commit)

    for member in fleet.members.values():
        content = files(member)
        assert content["/etc/motd"] == f"{member.name}\nManaged by gitops-agent (in waves).\n", member.name
        if "app" in member.groups:
            assert content["/etc/gitops-app/app.conf"] is not None
            assert "greeting = hello in waves\n" in content["/etc/gitops-app/app.conf"]
            assert "edited by hand" not in content["/etc/gitops-app/app.conf"]
        else:
            assert content["/etc/gitops-demo/web/limits.conf"] == "max_workers = 8\n", member.name
    # Converged in wave order, every wave's criteria met, never halted.
    state = control(fleet, commit)["answer"]
    assert state["halted"] is None, state
    assert [(w["name"], w["converged"], w["failed"]) for w in state["waves"]] == [
        ("canary", 1, 0), ("early", 1, 0), ("rest", 2, 0)], state["waves"]
    met = [datetime.fromisoformat(w["criteria_met_at"]) for w in state["waves"]]
    assert met == sorted(met), state["waves"]
    finished = {h: datetime.fromisoformat(r["finished_at"]) for h in fleet.members
                for r in fleet.runs_of(h)[:1]}
    assert finished[canary.name] < finished[early.name] < min(finished["fleet3"], finished["fleet4"])


def approve_in_the_browser(fleet: Fleet, commit: str, plans: list[str]) -> None:
    """An operator signs in, finds each pending plan with its diff on the commit page, approves it."""
    from playwright.sync_api import sync_playwright

    target = f"{fleet.collector.url}/commits/{commit}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(target)
        page.fill("#token", fleet.reader_token)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: url.split("#")[0] == target)
        control_text = page.inner_text("#rollout")
        assert "Not halted" in control_text, control_text
        shot(page, "fleet-rollout-pending-approval")
        for digest in plans:
            plan = page.locator(f"#plan-{digest[:12]}")
            assert "/etc/gitops-app/app.conf" in plan.inner_text(), plan.inner_text()
            assert "hello in waves" in plan.inner_text(), plan.inner_text()
            plan.locator("input[name=reason]").fill(f"{OPERATOR}: new greeting reviewed")
            plan.locator("button[type=submit]").click()
            page.wait_for_url(f"{target}#rollout")
        assert "No plan waits for approval" in page.inner_text("#rollout")
        shot(page, "fleet-rollout-approved")
        context.close()
        browser.close()
    assert errors == [], f"console errors (CSP violations?): {errors}"
