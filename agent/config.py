"""Agent settings: declared once in SETTINGS (name, type, default, help), which drives validation,
`gitops-agent config --help`-style docs and the frozen config objects. Only this module reads the
configuration file and the environment.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.config_values import (
    _boolean,
    _choice,
    _duration,
    _mapping,
    _opt_http_url,
    _opt_string,
    _positive_int,
    _regex_list,
    _size,
    _string,
    _string_list,
    private_file,
)
from agent.config_values import (
    parse_duration as parse_duration,
)
from agent.errors import ConfigError
from agent.report import Mode

DEFAULT_CONFIG_PATH = Path("/etc/gitops-agent/agent.yaml")
CONFIG_ENV = "GITOPS_AGENT_CONFIG"
REQUIRED = object()

@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("host", _opt_string, None, "inventory hostname of this machine; default: its FQDN"),
    Setting("source.url", _string, REQUIRED,
            "Git repository: https, ssh, file:// URL, a local path, or a .bundle file"),
    Setting("source.mirrors", _string_list, [], "tried in order when source.url fails"),
    Setting("source.ref", _string, "main", "branch, tag or full commit id to run"),
    Setting("source.verify", _choice("none", "gpg", "ssh"), "none", "commit signature policy"),
    Setting("source.trusted_keys", _opt_string, "/etc/gitops-agent/trusted-keys",
            "GPG public keys (dir or file) or an SSH allowed_signers file"),
    Setting("source.allow_rewind", _boolean, False,
            "accept a ref that moved backwards or was force-pushed"),
    Setting("source.depth", _positive_int, 1, "fetch depth (0 = full history); deepened when needed"),
    Setting("source.keep_releases", _positive_int, 3, "checked-out commits kept (rollback, offline)"),
    Setting("source.timeout", _duration, "2m", "a fetch from one source longer than this is abandoned"),
    Setting("source.credentials_file", _opt_string, None,
            "HTTPS sources: file (mode 0600) with lines https://USER:TOKEN@HOST given to git, never logged"),
    Setting("source.ssh_key", _opt_string, None, "SSH sources: private key (mode 0600) used by git's ssh"),
    Setting("source.known_hosts", _opt_string, None,
            "SSH sources: pinned known_hosts; with it, unknown or changed host keys are refused"),
    Setting("playbooks", _string, "playbooks", "folder in the repo: role R runs <playbooks>/R.yml"),
    Setting("inventory", _string, "inventory", "inventory file or folder in the repo"),
    Setting("mode", _choice("enforce", "detect"), "enforce", "enforce: apply drift | detect: report only"),
    Setting("extra_vars", _mapping, {}, "variables passed to every playbook run (-e), e.g. a target root"),
    Setting("schedule.interval", _duration, "30m", "full drift check every this often"),
    Setting("schedule.poll", _duration, "1m", "cheap look for new commits every this often"),
    Setting("schedule.splay", _duration, "5m", "upper bound of the fixed per-host offset"),
    Setting("schedule.timeout", _duration, "30m", "a run longer than this is stopped and reported"),
    Setting("schedule.stop_grace", _duration, "30s", "on SIGTERM, how long a running cycle may finish"),
    Setting("schedule.fallback_poll", _duration, "10m",
            "with collector.beacon: ask Git (ls-remote) this often while the collector does not answer"),
    Setting("schedule.commit_splay", _duration, "0s",
            "with collector.beacon: upper bound of the fixed per-host wait before fetching a new commit"),
    Setting("collector.url", _opt_http_url, None,
            "collector base URL, http(s)://HOST[:PORT]; unset: reports stay local"),
    Setting("collector.token_file", _opt_string, "/etc/gitops-agent/token", "this host's ingest token"),
    Setting("collector.ca_file", _opt_string, None, "extra CA bundle for the collector's TLS"),
    Setting("collector.client_cert", _opt_string, None,
            "client certificate (PEM) for a collector that requires one (serve --tls-client-ca)"),
    Setting("collector.client_key", _opt_string, None, "its private key (PEM, mode 0600)"),
    Setting("collector.beacon", _boolean, False,
            "ask the collector (serve --heads-source) for new commits instead of Git; Git still fetches"),
    Setting("collector.enrol", _boolean, False,
            "while collector.token_file does not exist, ask the collector for this host's token (with "
            "collector.enrol_secret_file, or the client certificate) and collect it once an operator "
            "approves; reports wait in the outbox until then"),
    Setting("collector.enrol_secret_file", _opt_string, None,
            "the site enrolment secret (mode 0600; gitops-collector token create --enrol NAME); read only "
            "while enrolling, so it may be removed afterwards"),
    Setting("outbox.max_reports", _positive_int, 1000,
            "reports kept for delivery at most; in-sync ones are compacted first, drift never"),
    Setting("outbox.max_bytes", _size, "100MB", "bytes kept for delivery at most (same rule)"),
    Setting("state_dir", _string, "/var/lib/gitops-agent", "where releases, reports and locks live"),
    Setting("lock_wait", _duration, "10s", "how long a second invocation waits for the cycle lock"),
    Setting("history", _positive_int, 50, "reports kept in state_dir/history"),
    Setting("ansible.strategy", _choice("mitogen", "linear"), "mitogen",
            "mitogen: persistent interpreters, ~4x less CPU per check; linear: Ansible's own (fallback)"),
    Setting("ansible.gather_subset", _string_list, [],
            "facts gathered once per fact_cache_timeout before the playbooks, besides the subsets the "
            "plays ask for ([]: just those)"),
    Setting("ansible.fact_cache_timeout", _duration, "10m",
            "facts are reused this long (check, apply and recheck of a cycle gather once)"),
    Setting("metrics_textfile", _opt_string, None,
            "write Prometheus metrics here after each cycle (node_exporter textfile collector)"),
    Setting("redact", _regex_list, [], "regexes: what they match in reports becomes [REDACTED]"),
    Setting("vault_password_file", _opt_string, None,
            "Ansible Vault password file (mode 0600); vault values are redacted from reports"),
    Setting("watch", _boolean, True,
            "the daemon watches the paths the last check managed (inotify) and checks their roles "
            "within seconds of a change (docs/watch.md)"),
    Setting("watch_exclude", _string_list, [], "roles whose paths are never watched (scheduled checks only)"),
    Setting("watch_debounce", _duration, "1s",
            "a watched change starts a check once the watched paths were quiet this long"),
    Setting("watch_contested_flips", _positive_int, 3,
            "a path put back this many times within an hour after the agent corrected it is contested: "
            "its changes no longer start checks"),
    Setting("watch_warm_start", _boolean, False,
            "watch checks are forked from a helper process that has the agent's code imported already "
            "(about 1 s sooner, for about 40 MB of memory in the helper); off (the default): each starts "
            "a new process. The helper runs while watching runs and this is on (a reload starts or "
            "stops it)"),
    Setting("watch_max_watches", _positive_int, 0,
            "inotify watches (one per directory) the daemon may use at most (0: up to the kernel's "
            "fs.inotify.max_user_watches); paths past it are checked on the schedule only"),
)
_BY_NAME = {s.name: s for s in SETTINGS}
_SECTIONS = {s.name.split(".")[0] for s in SETTINGS if "." in s.name}


@dataclass(frozen=True)
class SourceConfig:
    url: str
    mirrors: tuple[str, ...]
    ref: str
    verify: str
    trusted_keys: Path | None
    allow_rewind: bool
    depth: int
    keep_releases: int
    timeout_s: float
    credentials_file: Path | None = None
    ssh_key: Path | None = None
    known_hosts: Path | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    interval_s: float
    poll_s: float
    splay_s: float
    timeout_s: float
    stop_grace_s: float = 30.0
    fallback_poll_s: float = 600.0
    commit_splay_s: float = 0.0


@dataclass(frozen=True)
class CollectorConfig:
    url: str | None
    token_file: Path | None
    ca_file: Path | None
    client_cert: Path | None = None
    client_key: Path | None = None
    beacon: bool = False
    enrol: bool = False
    enrol_secret_file: Path | None = None


@dataclass(frozen=True)
class OutboxConfig:
    max_reports: int = 1000
    max_bytes: int = 100 * 1024 * 1024


@dataclass(frozen=True)
class AnsibleConfig:
    strategy: str = "mitogen"
    gather_subset: tuple[str, ...] = ()
    fact_cache_timeout_s: float = 600.0


@dataclass(frozen=True)
class AgentConfig:
    host: str
    source: SourceConfig
    playbooks: str
    inventory: str
    mode: Mode  # enforce or detect
    extra_vars: Mapping[str, Any]
    schedule: ScheduleConfig
    collector: CollectorConfig
    state_dir: Path
    lock_wait_s: float
    history: int
    metrics_textfile: Path | None = None
    outbox: OutboxConfig = OutboxConfig()
    redact: tuple[str, ...] = ()
    vault_password_file: Path | None = None
    ansible: AnsibleConfig = AnsibleConfig()
    path: Path | None = None
    watch: bool = True  # the daemon watches managed paths (docs/watch.md)
    watch_exclude: tuple[str, ...] = ()  # roles never watched
    watch_debounce_s: float = 1.0
    watch_contested_flips: int = 3
    watch_max_watches: int = 0  # 0: no cap of our own
    watch_warm_start: bool = False  # watch checks forked from agent.zygote's helper


def _flatten(data: dict[str, Any], origin: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"{origin}: key {key!r} must be a string")
        if key in _SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {key}: expected a mapping of settings")
            for sub, sub_value in value.items():
                flat[f"{key}.{sub}"] = sub_value
        else:
            flat[key] = value
    return flat


def _resolve_path(value: str | None, base: Path) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _resolve_url(value: str, base: Path) -> str:
    """Local relative paths are relative to the config file; URLs stay as they are."""
    if "://" in value or re.match(r"^[\w.-]+@[\w.-]+:", value) or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def validate(data: Any, *, origin: str = "config", base: Path | None = None) -> AgentConfig:
    """Turn a parsed YAML document into an AgentConfig, or raise ConfigError naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of settings at the top level")
    flat = _flatten(data, origin)
    for key in flat:
        if key not in _BY_NAME:
            raise ConfigError(f"{origin}: unknown key '{key}'{did_you_mean(key)}")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = flat.get(setting.name, setting.default)
        if raw is REQUIRED:
            raise ConfigError(f"{origin}: '{setting.name}' is required ({setting.help})")
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{origin}: '{setting.name}': {e}") from None
    return _build(values, base or Path.cwd(), origin)


def _build(v: dict[str, Any], base: Path, origin: str) -> AgentConfig:
    schedule = ScheduleConfig(v["schedule.interval"], v["schedule.poll"], v["schedule.splay"],
                              v["schedule.timeout"], v["schedule.stop_grace"], v["schedule.fallback_poll"],
                              v["schedule.commit_splay"])
    if schedule.interval_s <= 0 or schedule.poll_s <= 0 or schedule.timeout_s <= 0:
        raise ConfigError(f"{origin}: 'schedule.interval', 'schedule.poll' and 'schedule.timeout' "
                          "must be > 0")
    if v["source.keep_releases"] < 1:
        raise ConfigError(f"{origin}: 'source.keep_releases' must be at least 1")
    source = SourceConfig(
        url=_resolve_url(v["source.url"], base),
        mirrors=tuple(_resolve_url(m, base) for m in v["source.mirrors"]),
        ref=v["source.ref"], verify=v["source.verify"],
        trusted_keys=_resolve_path(v["source.trusted_keys"], base),
        allow_rewind=v["source.allow_rewind"], depth=v["source.depth"],
        keep_releases=v["source.keep_releases"], timeout_s=v["source.timeout"],
        credentials_file=_secret(v, "source.credentials_file", base, origin),
        ssh_key=_secret(v, "source.ssh_key", base, origin),
        known_hosts=_resolve_path(v["source.known_hosts"], base),
    )
    collector = CollectorConfig(v["collector.url"], _resolve_path(v["collector.token_file"], base),
                                _resolve_path(v["collector.ca_file"], base),
                                _resolve_path(v["collector.client_cert"], base),
                                _secret(v, "collector.client_key", base, origin), v["collector.beacon"],
                                v["collector.enrol"], _resolve_path(v["collector.enrol_secret_file"], base))
    if (collector.client_cert is None) != (collector.client_key is None):
        raise ConfigError(f"{origin}: 'collector.client_cert' and 'collector.client_key' go together")
    _check_beacon(collector, schedule, origin)
    _check_enrol(collector, origin)
    if v["outbox.max_reports"] < 1:
        raise ConfigError(f"{origin}: 'outbox.max_reports' must be at least 1")
    outbox = OutboxConfig(v["outbox.max_reports"], v["outbox.max_bytes"])
    if not 0 < v["watch_debounce"] <= 30:
        raise ConfigError(f"{origin}: 'watch_debounce' must be more than 0s and at most 30s")
    if v["watch_contested_flips"] < 1:
        raise ConfigError(f"{origin}: 'watch_contested_flips' must be at least 1")
    for role in v["watch_exclude"]:
        problem = watch_exclude_problem(role)
        if problem:
            raise ConfigError(f"{origin}: 'watch_exclude': {role!r} {problem}")
    state_dir = _resolve_path(v["state_dir"], base)
    assert state_dir is not None
    return AgentConfig(
        host=v["host"] or socket.getfqdn(), source=source, playbooks=v["playbooks"],
        inventory=v["inventory"], mode=Mode(v["mode"]), extra_vars=v["extra_vars"], schedule=schedule,
        collector=collector, state_dir=state_dir, lock_wait_s=v["lock_wait"], history=v["history"],
        metrics_textfile=_resolve_path(v["metrics_textfile"], base),
        outbox=outbox, redact=v["redact"],
        vault_password_file=private_file(_resolve_path(v["vault_password_file"], base), origin,
                                         "vault_password_file"),
        ansible=AnsibleConfig(v["ansible.strategy"], v["ansible.gather_subset"],
                              v["ansible.fact_cache_timeout"]),
        watch=v["watch"], watch_exclude=v["watch_exclude"], watch_debounce_s=v["watch_debounce"],
        watch_contested_flips=v["watch_contested_flips"], watch_max_watches=v["watch_max_watches"],
        watch_warm_start=v["watch_warm_start"],
    )


def _check_beacon(collector: CollectorConfig, schedule: ScheduleConfig, origin: str) -> None:
    if collector.beacon and not collector.url:
        raise ConfigError(f"{origin}: 'collector.beacon' needs 'collector.url' (the collector to ask)")
    if schedule.fallback_poll_s < schedule.poll_s:
        raise ConfigError(f"{origin}: 'schedule.fallback_poll' must be at least 'schedule.poll' (it is the "
                          "slower pace while the collector is away)")
    if schedule.commit_splay_s > schedule.interval_s:
        raise ConfigError(f"{origin}: 'schedule.commit_splay' must be at most 'schedule.interval' (the full "
                          "check fetches anyway)")


def _check_enrol(collector: CollectorConfig, origin: str) -> None:
    if not collector.enrol:
        return
    if not collector.url or collector.token_file is None:
        raise ConfigError(f"{origin}: 'collector.enrol' needs 'collector.url' and 'collector.token_file' "
                          "(where the token it collects is written)")
    if collector.enrol_secret_file is None and collector.client_cert is None:
        raise ConfigError(f"{origin}: 'collector.enrol' needs 'collector.enrol_secret_file' or "
                          "'collector.client_cert' (what proves this host may ask)")


def _secret(v: dict[str, Any], name: str, base: Path, origin: str) -> Path | None:
    return private_file(_resolve_path(v[name], base), origin, name)


def config_path(explicit: str | None) -> Path:
    """--config, else $GITOPS_AGENT_CONFIG, else /etc/gitops-agent/agent.yaml."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def did_you_mean(key: str) -> str:
    """'; did you mean 'schedule.interval'?' for a near miss of a setting's name, else ''.

    A key is compared with every setting's full name and, when it has no section, with the last part
    of each name too (`interval` at the top level -> 'schedule.interval')."""
    names = [s.name for s in SETTINGS] + sorted(_SECTIONS)
    found = difflib.get_close_matches(key, names, n=1, cutoff=0.7)
    if not found and "." not in key:
        by_tail = {n.rpartition(".")[2]: n for n in names if "." in n}
        tails = difflib.get_close_matches(key, list(by_tail), n=1, cutoff=0.7)
        found = [by_tail[t] for t in tails]
    return f"; did you mean '{found[0]}'?" if found else ""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping (at any depth) is an error:
    YAML 1.2 requires unique keys, and PyYAML would silently keep the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: its keys may be overridden, as YAML intends
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class says what is wrong with it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {first + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, origin: str) -> Any:
    """YAML text -> data, refusing duplicate keys; ConfigError with the line and the reason."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        raise ConfigError(f"{origin}: invalid YAML{where}" + (f": {problem}" if problem else "")) from e


def watch_exclude_problem(role: str) -> str | None:
    """What is wrong with a `watch_exclude` entry (None when it is a role name). A role is the name of
    a playbook in the playbooks folder without `.yml` (agent.inventory); patterns are not supported, so
    a glob that would match nothing is refused rather than silently excluding no role."""
    if not role or role != role.strip():
        return "is not a role name (empty, or spaces around it)"
    if any(c in role for c in "*?[]"):
        return "is a pattern: name each role (the playbook's name without .yml); globs are not supported"
    if "/" in role or "\0" in role or role in (".", ".."):
        return "is not a role name: a role is a playbook's name without .yml, not a path"
    if role.endswith((".yml", ".yaml")):
        return f"names a file: the role is {role.rsplit('.', 1)[0]!r} (the playbook's name without .yml)"
    return None


def load(path: Path) -> AgentConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from e
    data = parse_yaml(text, str(path))
    config = validate(data, origin=str(path), base=path.parent.resolve())
    return AgentConfig(**{**config.__dict__, "path": path})


def describe() -> str:
    """Every setting with its default and help: used by `gitops-agent run --help` and the docs."""
    lines = []
    for s in SETTINGS:
        default = "required" if s.default is REQUIRED else f"default {s.default!r}"
        lines.append(f"  {s.name:<22} {s.help} ({default})")
    return "\n".join(lines)
