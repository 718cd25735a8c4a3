from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent import config
from agent.errors import ConfigError


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("source:\n  url: repo\nstate_dir: state\nschedule: {interval: 10m, poll: 30s}\n")
    cfg = config.load(path)
    assert cfg.source.url == str(tmp_path / "repo")
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.source.ref == "main" and cfg.mode == "enforce" and cfg.source.depth == 1
    assert cfg.schedule.interval_s == 600 and cfg.schedule.poll_s == 30 and cfg.schedule.timeout_s == 1800
    assert cfg.host  # defaults to this machine's FQDN


@pytest.mark.parametrize("url", ["https://git.example.com/ops/fleet.git", "git@git.example.com:ops/f.git",
                                 "file:///srv/git/fleet.git", "/srv/git/fleet.git"])
def test_urls_are_kept(url: str) -> None:
    assert config.validate({"source": {"url": url}}).source.url == url


@pytest.mark.parametrize(("data", "message"), [
    ({}, "'source.url' is required"),
    ({"source": {"url": "x"}, "colour": "red"}, "unknown key 'colour'"),
    ({"source": {"url": "x", "branch": "main"}}, "unknown key 'source.branch'"),
    ({"source": {"url": "x"}, "mode": "yolo"}, "'mode': expected one of: enforce, detect"),
    ({"source": {"url": "x"}, "schedule": {"interval": "soon"}}, "'schedule.interval': 'soon' is not a duration"),
    ({"source": {"url": "x"}, "schedule": {"poll": 0}}, "must be > 0"),
    ({"source": {"url": "x", "allow_rewind": "yes"}}, "'source.allow_rewind': expected true or false"),
    ({"source": {"url": "x", "mirrors": "y"}}, "'source.mirrors': expected a list of strings"),
    ({"source": {"url": "x", "depth": -1}}, "'source.depth': expected a whole number"),
    ({"source": "x"}, "source: expected a mapping"),
    ([1, 2], "expected a mapping of settings at the top level"),
    ({"source": {"url": "x"}, "watch": "on"}, "'watch': expected true or false"),
    ({"source": {"url": "x"}, "watch": {"debounce": "2s"}}, "'watch': expected true or false"),
    ({"source": {"url": "x"}, "watch_exclude": "db"}, "'watch_exclude': expected a list of strings"),
    ({"source": {"url": "x"}, "watch_exclude": ["db*"]}, "'watch_exclude': 'db*' is a pattern: name each role"),
    ({"source": {"url": "x"}, "watch_exclude": ["web", "[ab]"]}, "'watch_exclude': '[ab]' is a pattern"),
    ({"source": {"url": "x"}, "watch_exclude": [" db"]}, "'watch_exclude': ' db' is not a role name"),
    ({"source": {"url": "x"}, "watch_exclude": ["playbooks/db"]}, "'playbooks/db' is not a role name: a role"),
    ({"source": {"url": "x"}, "watch_exclude": ["db.yml"]}, "'watch_exclude': 'db.yml' names a file: the role "
     "is 'db'"),
    ({"source": {"url": "x"}, "watch_debounce": "soon"}, "'watch_debounce': 'soon' is not a duration"),
    ({"source": {"url": "x"}, "watch_debounce": 0}, "'watch_debounce' must be more than 0s and at most 30s"),
    ({"source": {"url": "x"}, "watch_debounce": "1m"}, "'watch_debounce' must be more than 0s and at most 30s"),
    ({"source": {"url": "x"}, "watch_contested_flips": 0}, "'watch_contested_flips' must be at least 1"),
    ({"source": {"url": "x"}, "watch_max_watches": -1}, "'watch_max_watches': expected a whole number"),
    ({"source": {"url": "x"}, "watch_debounc": "1s"}, "unknown key 'watch_debounc'"),
    # a collector URL httpx would refuse only at the first report (which then waits in the outbox for ever)
    ({"source": {"url": "x"}, "collector": {"url": "htp//bad url"}},
     "'collector.url': 'htp//bad url' is not a collector URL: expected http(s)://HOST[:PORT]"),
    ({"source": {"url": "x"}, "collector": {"url": "ftp://example.com"}}, "'ftp://example.com' is not a collector"),
    ({"source": {"url": "x"}, "collector": {"url": "http://127.0.0.1:99999"}}, "'http://127.0.0.1:99999' is not"),
    ({"source": {"url": "x"}, "collector": {"url": "https://c.example.com/?x=1"}}, "is not a collector URL"),
    ({"source": {"url": "x"}, "collector": {"url": "https://c.example.com/?"}}, "is not a collector URL"),
    ({"source": {"url": "x"}, "collector": {"url": "https://c.example.com#x"}}, "is not a collector URL"),
    ({"source": {"url": "x"}, "collector": {"url": "https://ops:s3cret@"}}, "'collector.url': it is not a collector"),
    ({"source": {"url": "x"}, "collector": {"url": 8080}}, "'collector.url': expected a non-empty string"),
])
def test_bad_config_names_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        config.validate(data)
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "https://collector.example.com", "HTTPS://c.example.com/",
                                 "https://collector.example.com:8443/gitops", "http://[::1]:8080"])
def test_collector_urls_are_kept(url: str) -> None:
    assert config.validate({"source": {"url": "x"}, "collector": {"url": url}}).collector.url == url


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("source:\n  url: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d"):
        config.load(bad)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1.5h", 5400), ("2d", 172800),
                                               (45, 45), ("250ms", 0.25)])
def test_durations(text: str | int, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    assert config.config_path(None) == Path("/etc/gitops-agent/agent.yaml")
    monkeypatch.setenv(config.CONFIG_ENV, "/tmp/from-env.yaml")
    assert config.config_path(None) == Path("/tmp/from-env.yaml")
    assert config.config_path("explicit.yaml") == Path("explicit.yaml")


def test_cli_config_error_is_one_line_and_exit_78(cli, tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("source:\n  url: x\nschedule:\n  intervall: 5m\n")
    result = cli("run", "--config", str(path))
    assert result.code == 78  # EX_CONFIG, as for the daemon
    assert result.err.strip() == (f"gitops-agent: error: {path}: unknown key 'schedule.intervall'; "
                                  "did you mean 'schedule.interval'?")
    assert not (tmp_path / "state").exists()  # nothing else happened


def test_cli_config_from_environment(cli, tmp_path: Path) -> None:
    result = cli("status", env={"GITOPS_AGENT_CONFIG": str(tmp_path / "nope.yaml")})
    assert result.code == 78 and "nope.yaml: cannot read the configuration file" in result.err


def test_help_teaches_settings(cli) -> None:
    result = cli("--help")
    assert result.code == 0
    assert "source.url" in result.out and "exit codes" in result.out


def test_redact_patterns(tmp_path: Path) -> None:
    cfg = config.validate({"source": {"url": "x"}, "redact": [r"LIC-\d+", "pass=(\\S+)"]})
    assert cfg.redact == (r"LIC-\d+", "pass=(\\S+)") and cfg.vault_password_file is None
    assert config.validate({"source": {"url": "x"}}).redact == ()
    with pytest.raises(ConfigError, match=r"'redact': item 1: invalid regular expression '\('"):
        config.validate({"source": {"url": "x"}, "redact": ["ok", "("]})
    with pytest.raises(ConfigError, match="'redact': expected a list of strings"):
        config.validate({"source": {"url": "x"}, "redact": "LIC-.*"})


def test_vault_password_file_must_exist_and_be_private(tmp_path: Path) -> None:
    path = tmp_path / "vault-pass"
    data = {"source": {"url": "x"}, "vault_password_file": "vault-pass"}
    with pytest.raises(ConfigError, match=r"'vault_password_file': .*/vault-pass: cannot use it \(No such file"):
        config.validate(data, base=tmp_path)
    path.write_text("pw\n")
    path.chmod(0o640)
    with pytest.raises(ConfigError) as err:
        config.validate(data, base=tmp_path)
    assert str(err.value) == (f"config: 'vault_password_file': permissions 0640 for '{path}' are too open: it "
                              f"must not be accessible by group or others (chmod 600 {path})")
    path.chmod(0o600)
    assert config.validate(data, base=tmp_path).vault_password_file == path
    with pytest.raises(ConfigError, match="is not a regular file"):
        config.validate({**data, "vault_password_file": str(tmp_path)})


def test_vault_password_file_owned_by_someone_else(tmp_path: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    path = tmp_path / "vault-pass"
    path.write_text("pw\n")
    path.chmod(0o600)
    os.chown(path, 4242, -1)
    with pytest.raises(ConfigError, match=r"owned by uid 4242, not by the agent's user \(uid 0\)"):
        config.validate({"source": {"url": "x"}, "vault_password_file": str(path)})


@pytest.mark.parametrize("name", ["source.credentials_file", "source.ssh_key", "collector.client_key"])
def test_secret_files_must_be_private(tmp_path: Path, name: str) -> None:
    path = tmp_path / "secret"
    path.write_text("s\n")
    path.chmod(0o644)
    section, key = name.split(".")
    data: dict = {"source": {"url": "x"}, "collector": {"client_cert": "cert.pem"}}
    data[section] = {**data.get(section, {}), key: "secret"}
    if name != "collector.client_key":
        data["collector"] = {}
    with pytest.raises(ConfigError, match=rf"'{name}': permissions 0644 for '{path}' are too open"):
        config.validate(data, base=tmp_path)
    path.chmod(0o600)
    cfg = config.validate(data, base=tmp_path)
    assert path in (cfg.source.credentials_file, cfg.source.ssh_key, cfg.collector.client_key)


def test_client_cert_and_key_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'collector\.client_cert' and 'collector\.client_key' go together"):
        config.validate({"source": {"url": "x"}, "collector": {"client_cert": "c.pem"}}, base=tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("source:\n  url: x\nmode: detect\nmode: enforce\n",
     "invalid YAML at line 4: duplicate key 'mode' (first given at line 3)"),
    ("source:\n  url: x\n  url: y\n", "invalid YAML at line 3: duplicate key 'url' (first given at line 2)"),
    ("source: {url: x}\nextra_vars:\n  app: {port: 1, port: 2}\n",
     "invalid YAML at line 3: duplicate key 'port' (first given at line 3)"),
    ("source: {url: x}\nsource: {url: y}\n", "invalid YAML at line 2: duplicate key 'source'"),
])
def test_duplicate_keys_are_refused_at_any_depth(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {message}")):
        config.load(path)


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("extra_vars:\n  defaults: &d {port: 1, user: app}\n  app:\n    <<: *d\n    port: 2\n"
                    "source: {url: x}\n")
    assert config.load(path).extra_vars["app"] == {"port": 2, "user": "app"}


@pytest.mark.parametrize(("key", "hint"), [
    ("schedule.intervall", "schedule.interval"), ("interval", "schedule.interval"), ("state-dir", "state_dir"),
    ("sauce", "source"), ("collector.token", "collector.token_file"), ("colour", None), ("zzz", None),
])
def test_unknown_keys_get_a_did_you_mean(key: str, hint: str | None) -> None:
    assert config.did_you_mean(key) == (f"; did you mean '{hint}'?" if hint else "")


def test_watch_settings_default_on_with_a_per_role_opt_out() -> None:
    cfg = config.validate({"source": {"url": "x"}})
    assert (cfg.watch, cfg.watch_exclude, cfg.watch_debounce_s, cfg.watch_contested_flips,
            cfg.watch_max_watches, cfg.watch_warm_start) == (True, (), 1.0, 3, 0, False)
    cfg = config.validate({"source": {"url": "x"}, "watch": False, "watch_exclude": ["db"],
                           "watch_debounce": 0.5, "watch_max_watches": 100, "watch_warm_start": True})
    assert (cfg.watch, cfg.watch_exclude, cfg.watch_debounce_s, cfg.watch_max_watches, cfg.watch_warm_start) == (
        False, ("db",), 0.5, 100, True)
