"""Client certificates (`serve --tls-client-ca`), for real: a throwaway CA, the collector served over TLS
on 127.0.0.1, and the agent's sender presenting its host's certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from agent.collector import tokens
from agent.collector.tables import runs
from agent.collector.tls import certified_name
from agent.collector.tokens import TokenKind
from agent.config import CollectorConfig
from agent.outbox import Outbox
from agent.report import to_json
from agent.sender import Sender
from tests.factory import BASE_TIME, make_report
from tests.live_collector import CollectorProcess

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(d: Path, name: str, subject: str, ext: str, ca: str = "ca") -> None:
    openssl("req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    (d / f"{name}.cnf").write_text(ext + "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.cnf", cwd=d)
    (d / f"{name}.key").chmod(0o600)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA; a server certificate for 127.0.0.1; client certificates for web01 (DNS SAN), db01 (CN only)
    and a person (reader); and a certificate from another CA."""
    d = tmp_path_factory.mktemp("mtls")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *EC, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                "-subj", f"/CN={ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    _issue(d, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _issue(d, "web01", "/CN=ignored-cn", "subjectAltName=DNS:web01.example.com\nextendedKeyUsage=clientAuth\n")
    _issue(d, "db01", "/CN=db01.example.com", "extendedKeyUsage=clientAuth\n")
    _issue(d, "alice", "/CN=alice", "extendedKeyUsage=clientAuth\n")
    _issue(d, "stranger", "/CN=web01.example.com", "extendedKeyUsage=clientAuth\n", ca="other-ca")
    return d


def test_the_certified_name_is_the_first_dns_san_else_the_cn():
    assert certified_name({"subject": ((("commonName", "cn"),),),
                           "subjectAltName": (("IP Address", "10.0.0.1"), ("DNS", "a.example"),
                                              ("DNS", "b.example"))}) == "a.example"
    assert certified_name({"subject": ((("organizationName", "o"),), (("commonName", "cn.example"),))}) \
        == "cn.example"
    assert certified_name({"subject": ((("organizationName", "o"),),)}) is None


@pytest.fixture
def served(pki, db_url, engine):
    process = CollectorProcess(db_url, None, "--tls-cert", str(pki / "server.pem"), "--tls-key",
                               str(pki / "server.key"), "--tls-client-ca", str(pki / "ca.pem"),
                               ca_file=pki / "ca.pem", client_cert=(pki / "alice.pem", pki / "alice.key"))
    yield process.start()
    process.stop()


def _client(process: CollectorProcess, pki: Path, who: str | None) -> httpx.Client:
    process.client_cert = (pki / f"{who}.pem", pki / f"{who}.key") if who else None
    return httpx.Client(base_url=process.url, verify=process.tls_context(), timeout=10)


def _post(client: httpx.Client, token: str, host: str) -> httpx.Response:
    return client.post("/api/v1/reports", content=to_json(make_report(host)),
                       headers={"Authorization": f"Bearer {token}"})


def test_the_agent_sender_delivers_with_its_client_certificate(tmp_path, engine, served, pki):
    token_file = tmp_path / "token"
    token_file.write_text(tokens.create(engine, TokenKind.INGEST, "web01.example.com", now=BASE_TIME)[1])
    token_file.chmod(0o600)
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(make_report("web01.example.com"))
    without = CollectorConfig(served.url, token_file, pki / "ca.pem")
    with Sender.from_config(without, max_attempts=1) as sender:
        refused = sender.deliver_outbox(outbox)
    assert refused.remaining == 1 and refused.delivered == 0
    assert "set collector.client_cert and collector.client_key" in refused.error
    config = CollectorConfig(served.url, token_file, pki / "ca.pem", pki / "web01.pem", pki / "web01.key")
    with Sender.from_config(config) as sender:
        assert sender.deliver_outbox(outbox).delivered == 1


def test_without_a_certificate_or_with_another_cas_the_handshake_is_refused(served, pki, engine):
    token = tokens.create(engine, TokenKind.INGEST, "web01.example.com", now=BASE_TIME)[1]
    for who in (None, "stranger"):  # no certificate; one for the right name from another CA
        with _client(served, pki, who) as client, pytest.raises(httpx.TransportError):
            _post(client, token, "web01.example.com")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar_one() == 0
    with _client(served, pki, "alice") as client:
        reader = tokens.create(engine, TokenKind.READER, "alice", now=BASE_TIME)[1]
        hosts = client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {reader}"})
    assert hosts.status_code == 200 and hosts.json()["total"] == 0


def test_a_certificate_for_one_host_cannot_report_for_another(served, pki, engine):
    web01 = tokens.create(engine, TokenKind.INGEST, "web01.example.com", now=BASE_TIME)[1]
    db01 = tokens.create(engine, TokenKind.INGEST, "db01.example.com", now=BASE_TIME)[1]
    with _client(served, pki, "web01") as client:
        stolen = _post(client, db01, "db01.example.com")  # db01's token, web01's certificate
        own = _post(client, web01, "web01.example.com")
    assert stolen.status_code == 403
    assert stolen.json() == {"error": "the client certificate is for host 'web01.example.com', "
                                      "not 'db01.example.com'"}
    assert own.status_code == 201
    with _client(served, pki, "db01") as client:  # a CN-only certificate names its host by the CN
        assert _post(client, db01, "db01.example.com").status_code == 201
