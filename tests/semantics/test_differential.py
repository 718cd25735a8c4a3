"""Differential test: every case under tests/semantics/cases/, run by `ansible-playbook --check --diff` from a
checkout and by `gitops-agent run --check --json`, must have the same task outcomes; cases with
`apply: true` are also applied by both, must leave the same files, and are checked again by both. A
difference fails unless the case lists a deviation (case.yml `deviations`) that docs/ansible-semantics.md
documents for that field.

Cost: two Ansible runs per case, six more with `apply: true` (a plain apply, the agent's check, apply
and recheck, and one more check each), about 8 CPU-minutes for all cases: the whole test is marked `heavy`, so
`make test-heavy` (which `.ci/run` runs after `make test`) runs it, not `make test`.
tests/semantics/differential.py has the runs and the comparison.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CliResult
from tests.semantics import differential as dt
from tests.semantics.cases import Case, all_cases, case_repo

# Cases that differ today because of a known fault, each naming its issue (strict: a case that starts to pass
# fails until its entry goes). Empty since issue 13's kinds landed.
PENDING: dict[str, tuple[str, bool]] = {}


def _params() -> list[Any]:
    params = []
    for case in all_cases():
        marks: list[Any] = []
        if not case.differential:
            marks.append(pytest.mark.skip(reason=f"not comparable: {case.differential_why}"))
        if case.name in PENDING:
            reason, applies = PENDING[case.name]
            marks.append(pytest.mark.xfail(applies, reason=reason, strict=True))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


@pytest.fixture(scope="module")
def documented() -> dict[str, dt.Deviation]:
    return dt.documented_deviations(dt.SEMANTICS_DOC.read_text(encoding="utf-8"))


def _config(case: Case, origin: Path, state: Path, root: Path, path: Path) -> Path:
    path.write_text(yaml.safe_dump(dt.agent_config(case, origin=origin, state=state, root=root)),
                    encoding="utf-8")
    return path


def _agent(cli: Callable[..., CliResult], config: Path, home: Path, *args: str) -> tuple[dict[str, Any], int]:
    result = cli("run", "--json", "--config", str(config), *args, env={"HOME": str(home)})
    assert result.out.strip(), f"the agent printed no report (exit {result.code}): {result.err[-3000:]}"
    return result.report, result.code


@pytest.mark.ansible
@pytest.mark.heavy
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", _params())
def test_agent_behaves_like_ansible_playbook(case: Case, tmp_path: Path, cli: Callable[..., CliResult],
                                            documented: dict[str, dt.Deviation]) -> None:
    origin = case_repo(case, tmp_path / "origin")
    checkout = tmp_path / "plain" / "checkout"
    subprocess.run(["git", "clone", "-q", str(origin.path), str(checkout)], check=True)
    home = tmp_path / "home"
    roots = {name: tmp_path / name for name in ("plain-root", "agent-root", "plain-apply", "agent-apply")}
    for path in (home, *roots.values()):
        path.mkdir()

    def both(plain: Callable[[], dt.PlainRun], agent: Callable[[], tuple[dict[str, Any], int]],
             ) -> tuple[dt.PlainRun, tuple[dict[str, Any], int]]:
        """The plain run and the agent's at once: they share nothing but the case's origin repo."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            agent_run = pool.submit(agent)
            return plain(), agent_run.result()

    def check(plain_root: Path, agent_root: Path, config: Path, prefix: str = "") -> list[dt.Difference]:
        """A --check by both sides of what is under their roots now."""
        plain, (report, code) = both(lambda: dt.plain_run(case, checkout, plain_root, check=True, home=home),
                                     lambda: _agent(cli, config, home, "--check"))
        outputs.append(f"--- ansible-playbook --check --diff ({prefix or 'fresh'}, exit {plain.rc}), last lines:\n"
                       + "\n".join(plain.output.splitlines()[-25:]))
        return dt.compare(dt.plain_outcomes(plain, plain_root), dt.agent_outcomes(report, code, agent_root),
                          prefix)

    outputs: list[str] = []
    config = _config(case, origin.path, tmp_path / "state", roots["agent-root"], tmp_path / "agent.yaml")
    differences = check(roots["plain-root"], roots["agent-root"], config)
    if case.apply:
        config = _config(case, origin.path, tmp_path / "state-apply", roots["agent-apply"],
                         tmp_path / "agent-apply.yaml")
        applied, (enforced, _) = both(
            lambda: dt.plain_run(case, checkout, roots["plain-apply"], check=False, home=home),
            lambda: _agent(cli, config, home))
        if (applied.rc == 0) != (dt.apply_verdict(enforced) == "ok"):
            differences.append(dt.Difference("apply.verdict", f"exit {applied.rc}",
                                             f"{enforced['status']}: {dt.agent_text(enforced)}"))
        differences += dt.compare_trees(dt.tree(roots["plain-apply"]), dt.tree(roots["agent-apply"]))
        differences += check(roots["plain-apply"], roots["agent-apply"], config, dt.AFTER_APPLY)

    problems = dt.judge(case, differences, documented)
    if problems:
        pytest.fail(f"case {case.name} ({case.description}): the agent deviates from ansible-playbook\n  - "
                    + "\n  - ".join(problems) + "\n" + "\n".join(outputs), pytrace=False)


# -- the judging rules, without Ansible -----------------------------------------------------------

DOC = """\
## D-alpha: the agent does alpha
- **Compared fields:** `verdict`, `stats.ok`
## D-beta: documented only
- **Compared fields:** none
## Not a deviation
"""


def _case(*deviations: str) -> Case:
    return Case(name="x", path=Path("/nonexistent"), description="d", kind="k", deviations=deviations)


def test_documented_deviations_name_their_fields() -> None:
    found = dt.documented_deviations(DOC)
    assert set(found) == {"D-alpha", "D-beta"}
    assert found["D-alpha"].fields == {"verdict", "stats.ok"} and found["D-beta"].fields == frozenset()


def test_the_semantics_page_and_every_case_agree(documented: dict[str, dt.Deviation]) -> None:
    assert documented, "docs/ansible-semantics.md documents no D- section"
    for deviation in documented.values():
        unknown = {f for f in deviation.fields if not dt.known_field(f)}
        assert not unknown, f"{deviation.id} names fields the differential test does not compare: {unknown}"
    for case in all_cases():
        for ident in case.deviations:
            assert f"D-{ident.removeprefix('D-')}" in documented, f"{case.name}: {ident} is not documented"


def test_a_difference_passes_only_where_a_listed_deviation_covers_its_field() -> None:
    documented = dt.documented_deviations(DOC)
    verdict, changed = dt.Difference("verdict", "ok", "failed"), dt.Difference("changed_tasks", ["a"], [])
    assert dt.judge(_case("D-alpha"), [verdict], documented) == []
    assert dt.judge(_case("alpha"), [verdict], documented) == []  # the D- prefix is optional in case.yml
    [unlisted] = dt.judge(_case(), [verdict], documented)
    assert unlisted.startswith("deviation not listed: verdict")
    [uncovered] = dt.judge(_case("D-alpha"), [verdict, changed], documented)
    assert uncovered.startswith("deviation not listed: changed_tasks")
    [stale] = dt.judge(_case("D-alpha"), [], documented)
    assert "did not differ" in stale
    assert dt.judge(_case("D-gamma"), [], documented) == [
        "case.yml lists D-gamma, which docs/ansible-semantics.md does not document"]


def test_outcomes_compare_as_multisets_and_failure_text_by_containment() -> None:
    plain = dt.Outcomes("failed", "exit 2", {"ok": 1, "rescued": 0}, changed_tasks=("site", "site"),
                        failed_tasks=("copy",), failure_reasons=("Could not find 'b.conf'",))
    agent = dt.Outcomes("failed", "exit 1", {"ok": 1}, changed_tasks=("site", "site"), failed_tasks=("copy",),
                        failure_reasons=("task 'copy' failed: item b.conf: Could not find 'b.conf'",))
    assert dt.compare(plain, agent) == []
    hidden = dt.Outcomes("failed", "exit 1", {"ok": 1}, changed_tasks=("site",), failed_tasks=("copy",),
                         failure_reasons=("task 'copy' failed: One or more items failed",))
    assert [d.field for d in dt.compare(plain, hidden)] == ["changed_tasks", "failure_text"]
