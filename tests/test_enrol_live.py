"""Self-enrolment end to end: a real collector on 127.0.0.1 and the real agent. A new host with only the
site enrolment secret runs a check (one Ansible run): its report waits in the outbox while its request is
pending; an operator approves its group with `gitops-collector enrol approve`; the agent collects its own
token (0600, where collector.token_file says) and the waiting report arrives. With client certificates
(`serve --tls-client-ca --enrol-autosign`), a host whose certificate matches is enrolled at once."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.collector.test_mtls import openssl
from tests.conftest import GitRepo
from tests.live_collector import CollectorProcess, collector_cli, token


def _private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.ansible
def test_a_new_host_enrols_waits_for_approval_and_delivers_what_waited(cli, write_config, app_repo: GitRepo,
                                                                       tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    subprocess.run([sys.executable, "-m", "agent.collector.cli", "migrate", "--db", db], check=True,
                   capture_output=True)
    secret_file = _private(tmp_path / "enrol-secret", token(db, "--enrol", "site-a") + "\n")
    reader = token(db, "--reader", "ops")
    token_file = tmp_path / "etc" / "token"  # not there yet: enrolment writes it
    collector = CollectorProcess(db, None, "--operator", "ops").start()
    try:
        config = str(write_config(app_repo.path, collector={
            "url": collector.url, "token_file": str(token_file), "enrol": True,
            "enrol_secret_file": str(secret_file)}))
        first = cli("run", "--check", "--json", "--config", config)  # the one Ansible run of this test
        assert first.code == 2 and first.report["status"] == "drifted", first.err
        assert "waiting for an operator to approve enrolment request" in first.err
        assert not token_file.exists()
        waiting = cli("enrol", "--json", "--config", config)
        answer = json.loads(waiting.out)
        assert waiting.code == 2 and answer["state"] == "pending" and not answer["token_ready"]
        assert "1 waiting" in cli("outbox", "--config", config).out  # nothing lost meanwhile

        (listed,) = json.loads(collector_cli_all(db, "enrol", "list", "--json"))
        assert (listed["id"], listed["host"], listed["groups"], listed["auth"]) == (
            answer["request_id"], "testhost", ["app"], "secret")
        # someone holding the site secret cannot collect this host's token
        stolen = httpx.post(f"{collector.url}/api/v1/enrolments/{listed['id']}/pickup",
                            headers={"Authorization": f"Bearer {secret_file.read_text().strip()}"})
        assert stolen.status_code == 404
        approved = collector_cli(db, "enrol", "approve", "--group", "app", "--reason", "new rack", "--by", "ops")
        assert approved == f"approved {listed['id']} testhost"

        flushed = cli("outbox", "--flush", "--config", config)  # what the daemon does at its next poll
        assert flushed.code == 0 and "delivered 1," in flushed.out, flushed.out + flushed.err
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert not (tmp_path / "state" / "enrolment.json").exists()  # the pickup secret is gone
        runs = httpx.get(f"{collector.url}/api/v1/hosts/testhost/runs",
                         headers={"Authorization": f"Bearer {reader}"}).json()
        assert [r["run_id"] for r in runs["items"]] == [first.report["run_id"]]
        done = cli("enrol", "--config", config)
        assert done.code == 0 and "the token file exists" in done.out
    finally:
        collector.stop()


def collector_cli_all(db: str, *args: str) -> str:
    """The whole standard output of `gitops-collector ARGS --db DB`."""
    return subprocess.run([sys.executable, "-m", "agent.collector.cli", *args, "--db", db], check=True,
                          capture_output=True, text=True).stdout


def _issue(d: Path, name: str) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.cnf").write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.cnf", cwd=d)
    (d / f"{name}.key").chmod(0o600)


def test_a_certificate_from_the_site_ca_is_autosigned_by_pattern(tmp_path: Path, cli) -> None:
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=site-ca", "-addext",
            "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "server.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.cnf", cwd=d)
    for name in ("web09.example.com", "db09.example.com"):
        _issue(d, name)
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    collector = CollectorProcess(db, None, "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"),
                                 "--tls-client-ca", str(d / "ca.pem"), "--enrol-autosign", "web*.example.com",
                                 ca_file=d / "ca.pem", client_cert=(d / "db09.example.com.pem",
                                                                    d / "db09.example.com.key"))
    collector.start()
    try:
        outcomes = {}
        for name in ("web09.example.com", "db09.example.com"):
            config = tmp_path / f"{name}.yaml"
            config.write_text(yaml.safe_dump({
                "host": name, "source": {"url": str(tmp_path / "no-repo-needed")},
                "state_dir": str(tmp_path / name / "state"),
                "collector": {"url": collector.url, "token_file": str(tmp_path / name / "token"),
                              "ca_file": str(d / "ca.pem"), "client_cert": str(d / f"{name}.pem"),
                              "client_key": str(d / f"{name}.key"), "enrol": True}}))
            outcomes[name] = cli("enrol", "--json", "--config", str(config))
        web, dbh = outcomes["web09.example.com"], outcomes["db09.example.com"]
        assert web.code == 0 and json.loads(web.out)["token_ready"], web.out + web.err
        assert stat.S_IMODE((tmp_path / "web09.example.com" / "token").stat().st_mode) == 0o600
        assert dbh.code == 2 and json.loads(dbh.out)["state"] == "pending"  # not matched: an operator decides
        rows = {r["host"]: r for r in json.loads(collector_cli_all(db, "enrol", "list", "--all", "--json"))}
        assert rows["web09.example.com"]["decided_by"] == "autosign:web*.example.com"
        assert rows["db09.example.com"]["auth"] == "certificate"
    finally:
        collector.stop()
