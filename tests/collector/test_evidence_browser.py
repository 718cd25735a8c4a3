"""The evidence export in a real headless browser (Debian's chromium through Playwright): a reader signs in,
summarises a range on /drift/evidence, downloads the JSON Lines bundle and the CSV bundle through the
page's links, and both are parsed (and the signature checked with ssh-keygen)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from agent.collector import db, evidence, tokens
from agent.collector.app import create_app
from agent.collector.context import Collector, CollectorSettings
from agent.collector.tokens import TokenKind
from agent.report import DriftItem, DriftKind, Status, to_json
from tests.collector.test_drift_inbox_browser import NOW, Clock, free_port
from tests.collector.test_ui_browser import console_page, shot, sign_in
from tests.factory import make_report

pytestmark = pytest.mark.browser
HOST = "web01.example.com"


@pytest.fixture
def served(tmp_path) -> Iterator[dict[str, Any]]:
    engine = db.create(f"sqlite:///{tmp_path / 'collector.db'}")
    db.prepare(engine)
    key = tmp_path / "evidence_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    settings = CollectorSettings(evidence_key=evidence.load_key(key))
    reader = tokens.create(engine, TokenKind.READER, "audrey", now=NOW)[1]
    ingest = tokens.create(engine, TokenKind.INGEST, HOST, now=NOW)[1]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Collector(engine, settings, now=Clock())),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the collector did not start"
        time.sleep(0.05)
    drift = (DriftItem(play="web servers", task="nginx config", role="web", module="ansible.builtin.template",
                       kind=DriftKind.CORRECTIVE, ansible_role="nginx", task_path="roles/nginx/tasks/main.yml:3",
                       first_seen_at=None),)
    for minutes, status in ((30, Status.IN_SYNC), (20, Status.DRIFTED)):
        report = make_report(HOST, status=status, finished_at=NOW - timedelta(minutes=minutes),
                             drift=drift if status is Status.DRIFTED else ())
        response = httpx.post(f"{url}/api/v1/reports", content=to_json(report),
                              headers={"Authorization": f"Bearer {ingest}", "Content-Type": "application/json"})
        assert response.status_code == 201, response.text
    try:
        yield {"url": url, "reader": reader, "public": key.with_suffix(".pub").read_text().split()[:2]}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


def test_download_and_parse_an_evidence_export_in_a_browser(served, tmp_path):
    from playwright.sync_api import sync_playwright

    url = served["url"]
    with sync_playwright() as p:
        pg, errors = console_page(p, downloads=True)
        pg.goto(f"{url}/drift/evidence")
        sign_in(pg, served["reader"])
        pg.wait_for_url(f"{url}/drift/evidence")
        pg.fill("#from", "2026-11-20")
        pg.fill("#scope", f"host:{HOST}")
        pg.click("form.evidence button[type=submit]")
        pg.wait_for_url("**/drift/evidence?from=*")
        assert pg.inner_text("table.evidence-counts td.runs") == "2"
        assert pg.inner_text("table.evidence-counts td.items") == "1"
        assert " ".join(served["public"]) in pg.inner_text("pre.allowed-signers")
        shot(pg, "evidence-summary")
        pg.emulate_media(media="print")  # printed: the figures stay; navigation, the form and links go
        assert pg.is_visible("table.evidence-counts") and pg.is_visible("pre.allowed-signers")
        assert not any(pg.is_visible(s) for s in ("header.top nav", "form.evidence", "p.downloads"))
        pg.emulate_media(media="screen")
        with pg.expect_download() as download:
            pg.click("a:text('JSON Lines')")
        assert download.value.suggested_filename.startswith("evidence-host_web01.example.com-20261120T000000Z")
        archive = zipfile.ZipFile(Path(download.value.path()))
        lines = [json.loads(line) for line in archive.read("evidence.jsonl").decode().splitlines()]
        assert lines[0]["type"] == "header" and lines[0]["scope"] == f"host:{HOST}"
        assert [r["status"] for r in lines if r["type"] == "run"] == ["in_sync", "drifted"]
        assert [r["task"] for r in lines if r["type"] == "drift_item"] == ["nginx config"]
        assert lines[-1]["counts"]["run"] == 2
        folder = tmp_path / "jsonl"
        archive.extractall(folder)
        (folder / "allowed_signers").write_text(pg.inner_text("pre.allowed-signers") + "\n")
        with (folder / "SHA256SUMS").open("rb") as sums:
            done = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", "allowed_signers", "-I", "gitops-collector",
                                   "-n", "gitops-evidence", "-s", "SHA256SUMS.sig"], stdin=sums, cwd=folder,
                                  capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        with pg.expect_download() as download:
            pg.click("a:text('CSV')")
        archive = zipfile.ZipFile(Path(download.value.path()))
        runs = list(csv.DictReader(io.StringIO(archive.read("runs.csv").decode())))
        assert [(r["host"], r["status"]) for r in runs] == [(HOST, "in_sync"), (HOST, "drifted")]
        pg.context.browser.close()
    assert errors == [], f"console errors (CSP violations?): {errors}"
