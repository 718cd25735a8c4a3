"""The plaintext of every Ansible Vault value in a checkout, so that reports can be scrubbed of them.

Besides agent.runner, the only module that imports ansible, and only for its vault code (the password file
as ansible-playbook reads it, and VaultLib). Two kinds of vault content are found, anywhere in the checkout
outside .git: inline ``!vault`` scalars in YAML files (inventory, group_vars, host_vars, playbooks, vars
files), and whole files encrypted with ``ansible-vault encrypt`` (every value of a vaulted vars file; the
whole text of any other vaulted file, such as a key that a copy task installs). The plaintexts live in
memory for one cycle; nothing here writes them anywhere or logs them.

The redactor can only hide what it can decrypt, so the vault password has one source: `vault_password_file`
in agent.yaml, which both ansible-playbook (--vault-password-file) and this module read.
`foreign_password_sources` finds every other place Ansible would take a vault password from (the
ansible.cfg it would read, the environment), and the cycle refuses to run with any of them.
"""

from __future__ import annotations

import configparser
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from agent import ansible_cfg
from agent.errors import PlanError
from agent.redact import Redactor

log = logging.getLogger(__name__)
HEADER = b"$ANSIBLE_VAULT"
MAX_FILE_BYTES = 4 * 1024 * 1024  # larger files are not vars files; ansible would not template them either
SKIP_DIRS = frozenset({".git"})


class _Vaulted(str):
    """The ciphertext of an inline !vault scalar."""


class _Loader(yaml.SafeLoader):
    """YAML as Ansible reads it: !vault scalars kept as ciphertext, any other tag (!unsafe) as plain data."""


def _vault_scalar(loader: yaml.SafeLoader, node: yaml.Node) -> _Vaulted:
    assert isinstance(node, yaml.ScalarNode)
    return _Vaulted(loader.construct_scalar(node))


def _other_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    assert isinstance(node, yaml.MappingNode)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor("!vault", _vault_scalar)
_Loader.add_multi_constructor("!", _other_tag)


# Ansible's settings that supply a vault password (ansible-core's config/base.yml): name, environment
# variable, ansible.cfg key in [defaults]. ask_vault_pass counts only when true.
PASSWORD_SETTINGS = (
    ("vault_password_file", "ANSIBLE_VAULT_PASSWORD_FILE", "vault_password_file"),
    ("vault_identity_list", "ANSIBLE_VAULT_IDENTITY_LIST", "vault_identity_list"),
    ("ask_vault_pass", "ANSIBLE_ASK_VAULT_PASS", "ask_vault_pass"),
)
_FALSE = ("", "0", "false", "no", "off", "n", "f")


def _set(name: str, value: str) -> bool:
    return value.strip().lower() not in _FALSE if name == "ask_vault_pass" else bool(value.strip())


def foreign_password_sources(cwds: Sequence[Path], environ: Mapping[str, str]) -> list[str]:
    """Every vault password source other than agent.yaml's vault_password_file that Ansible would use when
    started in any of `cwds` with `environ`; one line each."""
    found = [f"{env} is set in the agent's environment" for name, env, _ in PASSWORD_SETTINGS
             if _set(name, environ.get(env, ""))]
    for cfg in dict.fromkeys(c for c in (ansible_cfg.find(cwd, environ) for cwd in cwds) if c is not None):
        parser = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
        try:
            parser.read(cfg, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue  # Ansible refuses it too, with its own error
        found += [f"{cfg} sets {key} in [defaults]" for name, _, key in PASSWORD_SETTINGS
                  if _set(name, parser.get("defaults", key, fallback=""))]
    return found


def check_password_sources(cwds: Sequence[Path], environ: Mapping[str, str]) -> None:
    """Refuse (PlanError, one line) a vault password that would reach Ansible but not the redactor."""
    found = foreign_password_sources(cwds, environ)
    if found:
        raise PlanError("; ".join(found) + ": the agent takes the vault password only from "
                        "vault_password_file in agent.yaml (it hands it to ansible-playbook, and reads the "
                        "vault itself to keep its values out of reports); move the password file there")


def redactor(checkout: Path, *, patterns: Sequence[str], password_file: Path | None) -> Redactor:
    """The Redactor for reports of runs of `checkout`: the configured patterns, plus its vault values."""
    if password_file is None:
        return Redactor(patterns)
    started = time.monotonic()
    secrets = vault_secrets(checkout, password_file)
    log.debug("vault: %d value(s) to redact, read in %.2fs", len(secrets), time.monotonic() - started)
    return Redactor(patterns, secrets=secrets)


def vault_secrets(checkout: Path, password_file: Path) -> frozenset[str]:
    """Every vault plaintext in `checkout` that the password in `password_file` decrypts.

    A value that does not decrypt with it is skipped (with a warning naming the file): ansible cannot
    decrypt it either, so its plaintext cannot reach a report."""
    from ansible.errors import AnsibleError

    vault = _vault_lib(password_file)
    found: set[str] = set()
    for path, data in _vault_files(checkout):
        try:
            found.update(_file_secrets(data, vault))
        except (AnsibleError, yaml.YAMLError, UnicodeDecodeError) as e:
            log.warning("vault: %s: its vault values cannot be read (%s); they are not redacted",
                        path.relative_to(checkout), type(e).__name__)
    return frozenset(v for v in found if v.strip())


def _vault_lib(password_file: Path) -> Any:
    from ansible.errors import AnsibleError
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.vault import VaultLib, get_file_vault_secret

    try:  # as ansible-playbook --vault-password-file reads it (an executable file is run as a script)
        secret = get_file_vault_secret(filename=str(password_file), vault_id="default", loader=DataLoader())
        secret.load()
    except AnsibleError as e:
        raise PlanError(f"vault_password_file {password_file}: {e.message}") from e
    return VaultLib([("default", secret)])


def _vault_files(checkout: Path) -> Iterator[tuple[Path, bytes]]:
    """(path, content) of the regular files that hold vault data."""
    for folder, dirs, files in os.walk(checkout):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
                continue
            data = path.read_bytes()
            if HEADER in data:
                yield path, data


def _file_secrets(data: bytes, vault: Any) -> set[str]:
    if data.lstrip().startswith(HEADER):  # the whole file is in the vault
        text = _decrypt(vault, data.strip())
        try:
            document = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            document = None
        if isinstance(document, dict | list):
            return set(_leaves(document, vault, every_value=True))
        return {text}
    document = yaml.load(data.decode("utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    return set(_leaves(document, vault, every_value=False))


def _leaves(value: Any, vault: Any, *, every_value: bool) -> Iterator[str]:
    """The vault plaintexts in a YAML document; with every_value, every scalar value too (vaulted file)."""
    if isinstance(value, _Vaulted):
        yield _decrypt(vault, str(value).strip())
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item, vault, every_value=every_value)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, vault, every_value=every_value)
    elif every_value and isinstance(value, str | int | float) and not isinstance(value, bool):
        yield str(value)


def _decrypt(vault: Any, ciphertext: str | bytes) -> str:
    return bytes(vault.decrypt(ciphertext)).decode("utf-8", errors="replace")
