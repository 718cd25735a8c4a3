"""agent.redact.redact_report: configured patterns and known vault values out of every text of a report."""

from __future__ import annotations

import json
from dataclasses import replace

from agent import report as codec
from agent.redact import MARKER, VAULT_MARKER, Redactor, redact_record, redact_report, secret_variants
from agent.report import ApplyResult, Diff, ErrorItem, FailedTask, Pause, Phase, Status
from tests.factory import COMMIT_A, drift_item, make_report

VAULTED = "s3cr3t-Vault-Value"
KEY = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAoIB\n-----END KEY-----\n"


def leaky_report() -> codec.Report:
    item = replace(drift_item("Write the password"), task=f"Token {VAULTED}", diffs=(
        Diff(path="/etc/app.conf", before="password=old-one\n", after=f"password={VAULTED}\nlicense=LIC-1234\n"),
        Diff(path="/etc/key.pem", before=None, after="  " + KEY.replace("\n", "\n  ")),  # re-indented
        Diff(path="/etc/app.json", before=None, after='{"key": ' + json.dumps(KEY) + "}"),
    ))
    return make_report(
        status=Status.FAILED, drift=(item,), source=replace(make_report().source, subject="add LIC-1234"),
        apply=ApplyResult(attempted=True, changed=1, failed_tasks=(FailedTask("Login", f"bad {VAULTED}"),)),
        errors=(ErrorItem(Phase.APPLY, f"task 'Login' failed: bad {VAULTED} for LIC-1234"),),
        pause=Pause(reason="rotating LIC-1234"))


def test_patterns_and_vault_values_are_replaced_everywhere() -> None:
    redactor = Redactor([r"LIC-\d+", "[0-9a-f]{40}"], secrets=[VAULTED, KEY])
    report = leaky_report()
    clean = redact_report(report, redactor)
    text = codec.to_json(clean)
    for leak in (VAULTED, "LIC-1234", "MIIEvQIBADANBgkqhkiG9w0B", "AQEFAASCBKcwggSjAgEAAoIB"):
        assert leak not in text
    item = clean.drift[0]
    assert item.task == f"Token {VAULT_MARKER}"
    assert item.diffs[0] == Diff("/etc/app.conf", "password=old-one\n",
                                 f"password={VAULT_MARKER}\nlicense={MARKER}\n")
    assert clean.apply is not None and clean.apply.failed_tasks[0].message == f"bad {VAULT_MARKER}"
    assert clean.errors[0].message == f"task 'Login' failed: bad {VAULT_MARKER} for {MARKER}"
    assert clean.source.subject == f"add {MARKER}" and clean.pause == Pause(reason=f"rotating {MARKER}")
    # identifiers, enums, numbers and times are never touched, even by a pattern that matches them
    assert (clean.run_id, clean.host, clean.source.commit, clean.status) == (
        report.run_id, report.host, COMMIT_A, Status.FAILED)
    assert (clean.started_at, clean.stats, clean.durations_s, item.kind, item.role, item.module) == (
        report.started_at, report.stats, report.durations_s, report.drift[0].kind, "web",
        "ansible.builtin.template")
    assert codec.from_json(text) == clean  # still a valid v1 report


def test_without_patterns_or_secrets_the_report_is_unchanged() -> None:
    report = leaky_report()
    assert redact_report(report, Redactor([])) == report


def test_vault_values_go_before_patterns_so_no_piece_is_left() -> None:
    redactor = Redactor(["hunter"], secrets=["hunter2-long-tail"])
    assert redactor("pw hunter2-long-tail and hunter") == f"pw {VAULT_MARKER} and {MARKER}"


def test_secret_variants() -> None:
    assert secret_variants("abc") == set()  # too short to search for: it would mask ordinary words
    assert secret_variants(' pa"ss \n') == {' pa"ss \n', 'pa"ss', ' pa\\"ss \\n'}
    assert {"line-one", "line-two"} <= secret_variants("line-one\n  line-two\n")


def test_redact_record_works_on_any_frozen_record() -> None:
    diff = Diff(path="/x", before=None, after=f"v={VAULTED}")
    assert redact_record((diff, "plain"), Redactor([], secrets=[VAULTED])) == (
        Diff("/x", None, f"v={VAULT_MARKER}"), "plain")
