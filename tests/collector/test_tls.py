"""TLS between sender and collector: verified by default, a private CA through collector.ca_file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.collector import tokens
from agent.collector.tokens import TokenKind
from agent.config import CollectorConfig
from agent.outbox import Outbox
from agent.sender import Sender
from tests.factory import BASE_TIME, make_report
from tests.live_collector import CollectorProcess


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A private CA and a certificate for 127.0.0.1 signed by it."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                               "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return d


def test_private_ca_is_needed_and_enough(tmp_path, engine, db_url, pki):
    secret = tokens.create(engine, TokenKind.INGEST, "web01", now=BASE_TIME)[1]
    token_file = tmp_path / "token"
    token_file.write_text(secret)
    token_file.chmod(0o600)
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(make_report("web01"))
    process = CollectorProcess(db_url, None, "--tls-cert", str(pki / "server.pem"), "--tls-key",
                               str(pki / "server.key"), ca_file=pki / "ca.pem").start()
    try:
        with Sender.from_config(CollectorConfig(process.url, token_file, None), max_attempts=1) as sender:
            refused = sender.deliver_outbox(outbox)
        assert refused.remaining == 1
        assert "CERTIFICATE_VERIFY_FAILED" in refused.error
        with Sender.from_config(CollectorConfig(process.url, token_file, pki / "ca.pem")) as sender:
            assert sender.deliver_outbox(outbox).delivered == 1
    finally:
        process.stop()
