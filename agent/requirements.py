"""The collections and roles a config repo needs must be vendored in it: hosts never reach Galaxy.

`requirements.yml` (at the repo root, or `collections/requirements.yml` / `roles/requirements.yml`)
lists them in ansible-galaxy's format. Each entry must match content vendored in the checkout, in a
folder Ansible searches: the roles_path / collections_path of the repo's ansible.cfg (entries inside the
checkout), the checkout's `roles/` and `collections/` (which agent.runner adds to those paths), and
`roles/`, `collections/` next to the playbooks. Content is matched by its own metadata, so an entry may
name it however ansible-galaxy accepts:

- collections: `namespace.name`; or a source (type git, url, file, dir; `git+https://...,version`;
  `https://.../ns-name-1.0.0.tar.gz`), matched by the `repository` in the vendored collection's
  MANIFEST.json or galaxy.yml, by a tarball's `namespace-name-version` file name, or by a repository
  named `ns.name`, `ns-name`, `name` or `ansible-collection-name`;
- roles: `namespace.role`, a source (`src`, with `scm`, `version` and a `name` override; the
  `src,version,name` form), matched by the folder ansible-galaxy would install it as (the name, else
  the source's last path part), or by `galaxy_info.role_name` (and namespace) in a role's meta/main.yml.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent import ansible_cfg
from agent.errors import PlanError

FILES = ("requirements.yml", "collections/requirements.yml", "roles/requirements.yml")
SOURCE_TYPES = frozenset({"git", "url", "file", "dir", "subdirs"})
_ARCHIVE = re.compile(r"\.(tar\.gz|tgz|tar|zip)$")
_ROLE_PREFIXES = ("ansible-role-", "ansible_role_", "ansible-")


@dataclass(frozen=True)
class Requirement:
    kind: str  # "collection" | "role"
    text: str  # as written (for messages)
    name: str | None = None  # Galaxy name (ns.name) or, for roles, the install name
    source: str | None = None  # URL or path the content comes from


@dataclass(frozen=True)
class Collection:
    namespace: str
    name: str
    repository: str | None


@dataclass(frozen=True)
class Role:
    folder: str
    role_name: str | None
    namespace: str | None


# -- reading requirements.yml ---------------------------------------------------------------------

def _is_source(value: str) -> bool:
    return ("://" in value or value.startswith(("git+", "git@", "/", "./", "../", "~"))
            or bool(_ARCHIVE.search(value.split(",", 1)[0])))


def _collection(entry: Any, where: str) -> Requirement:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise PlanError(f"{where}: an entry has no name")
    name, kind = entry["name"], str(entry.get("type") or "galaxy")
    if kind in SOURCE_TYPES or _is_source(name):
        return Requirement("collection", name, source=name)
    return Requirement("collection", name, name=name)


def _comma_form(text: str) -> tuple[str, str | None]:
    """ansible-galaxy's `src,version,name` role form -> (src, name or None)."""
    parts = [p.strip() for p in text.split(",")]
    return parts[0], parts[2] if len(parts) > 2 and parts[2] else None


def _role(entry: Any, where: str) -> Requirement:
    if isinstance(entry, str):
        entry = {"src": entry}
    if not isinstance(entry, dict):
        raise PlanError(f"{where}: an entry has no name")
    src, name = entry.get("src"), entry.get("name")
    if isinstance(src, str) and "," in src:  # git+https://host/repo.git,v1.0[,name]
        src, named = _comma_form(src)
        name = name or named
    text = str(src or name or "")
    if not text:
        raise PlanError(f"{where}: an entry has no name")
    if isinstance(src, str) and src and _is_source(src):
        return Requirement("role", text, name=name or _source_name(src), source=src)
    return Requirement("role", text, name=name or text)


def _entries(data: Any, where: str) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise PlanError(f"{where}: expected a list")
    return data


def parse(path: Path) -> list[Requirement]:
    """The requirements one requirements.yml lists; PlanError naming the file when it is malformed."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise PlanError(f"{path.name}: cannot be read as YAML ({e})") from e
    if isinstance(data, list):  # the old format: a list of roles
        return [_role(e, path.name) for e in data]
    if not isinstance(data, dict):
        return []
    where = f"{path.name}: "
    collections = _entries(data.get("collections"), where + "collections")
    roles = _entries(data.get("roles"), where + "roles")
    return ([_collection(e, where + "collections") for e in collections]
            + [_role(e, where + "roles") for e in roles])


# -- sources ------------------------------------------------------------------------------------

def _bare_source(source: str) -> str:
    """git+https://Host/org/repo.git,v1#/sub -> host/org/repo: comparable repository identity."""
    text = source.strip().removeprefix("git+").split(",", 1)[0].split("#", 1)[0].rstrip("/")
    text = re.sub(r"^[a-z][a-z0-9+.-]*://", "", text, flags=re.IGNORECASE)
    text = re.sub(r"^[^@/]+@", "", text)  # user@ (ssh, or credentials)
    text = text.replace(":", "/", 1) if re.match(r"^[\w.-]+:(?!\d+/)", text) else text  # host:path (scp)
    text = text.removesuffix(".git")
    host, _, path = text.partition("/")
    return f"{host.lower()}/{path}" if path else host.lower()


def _source_name(source: str) -> str:
    """The last path part of a source without its archive or .git suffix (ansible-galaxy's role name)."""
    last = _bare_source(source).rsplit("/", 1)[-1]
    return _ARCHIVE.sub("", last)


# -- vendored content ---------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _collection_at(folder: Path) -> Collection:
    manifest = _read_json(folder / "MANIFEST.json")
    info = manifest.get("collection_info") if isinstance(manifest, dict) else None
    if not isinstance(info, dict):
        info = _read_yaml(folder / "galaxy.yml")
    info = info if isinstance(info, dict) else {}
    repository = info.get("repository")
    return Collection(str(info.get("namespace") or folder.parent.name), str(info.get("name") or folder.name),
                      repository if isinstance(repository, str) and repository else None)


def _role_at(folder: Path) -> Role:
    meta = _read_yaml(folder / "meta" / "main.yml")
    info = meta.get("galaxy_info") if isinstance(meta, dict) else None
    info = info if isinstance(info, dict) else {}
    role_name, namespace = info.get("role_name"), info.get("namespace") or info.get("author")
    return Role(folder.name, str(role_name) if role_name else None, str(namespace) if namespace else None)


def _inside(path: Path, checkout: Path) -> bool:
    return path.resolve().is_relative_to(checkout.resolve())


def search_dirs(checkout: Path, playbooks: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(collection folders, role folders) inside the checkout where Ansible looks for vendored content."""
    cfg = ansible_cfg.load(checkout)
    adjacent = [playbooks] if playbooks is not None else []
    collections = [*cfg.search_path("collections_path", checkout), *(p / "collections" for p in adjacent)]
    roles = [*cfg.search_path("roles_path", checkout), *(p / "roles" for p in adjacent)]
    return ([p for p in collections if p.is_dir() and _inside(p, checkout)],
            [p for p in roles if p.is_dir() and _inside(p, checkout)])


def vendored_collections(dirs: list[Path]) -> list[Collection]:
    found = []
    for base in dirs:
        root = base if base.name == "ansible_collections" else base / "ansible_collections"
        found += [_collection_at(c) for c in sorted(root.glob("*/*")) if c.is_dir()]
    return found


def vendored_roles(dirs: list[Path]) -> list[Role]:
    return [_role_at(r) for base in dirs for r in sorted(base.iterdir()) if r.is_dir()]


# -- matching -----------------------------------------------------------------------------------

def _collection_names(source: str) -> set[str]:
    """Galaxy names a source can stand for without metadata: a tarball's ns-name-version file name."""
    archive = re.match(r"^([a-z0-9_]+)-([a-z0-9_]+)-\d[\w.+-]*$", _source_name(source))
    return {f"{archive[1]}.{archive[2]}"} if archive else set()


def collection_vendored(req: Requirement, found: list[Collection]) -> bool:
    if req.name is not None:
        return any(f"{c.namespace}.{c.name}" == req.name for c in found)
    assert req.source is not None
    bare, last = _bare_source(req.source), _source_name(req.source)
    named = _collection_names(req.source)
    for c in found:
        fqcn = f"{c.namespace}.{c.name}"
        if c.repository is not None and _bare_source(c.repository) == bare:
            return True
        if fqcn in named or last in {fqcn, f"{c.namespace}-{c.name}", c.name, f"ansible-collection-{c.name}"}:
            return True
    return False


def _short(name: str) -> str:
    for prefix in _ROLE_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def role_vendored(req: Requirement, found: list[Role]) -> bool:
    assert req.name is not None
    namespace, _, role = req.name.rpartition(".") if req.source is None else ("", "", req.name)
    for r in found:
        if r.folder in (req.name, _short(role) if req.source is not None else req.name):
            return True
        same_role = r.role_name is not None and r.role_name in (_short(role), role)
        if same_role and (not namespace or r.namespace == namespace):
            return True
    return False


def missing(checkout: Path, playbooks: Path | None = None) -> list[str]:
    """What the repo's requirements name but does not vendor (empty: all present)."""
    collection_dirs, role_dirs = search_dirs(checkout, playbooks)
    collections, roles = vendored_collections(collection_dirs), vendored_roles(role_dirs)
    absent = []
    for rel in FILES:
        path = checkout / rel
        if not path.is_file():
            continue
        for req in parse(path):
            present = (collection_vendored(req, collections) if req.kind == "collection"
                       else role_vendored(req, roles))
            if not present:
                absent.append(f"{req.kind} {req.text}")
    return absent


def check(checkout: Path, playbooks: Path | None = None) -> None:
    absent = missing(checkout, playbooks)
    if absent:
        raise PlanError(f"requirements name {', '.join(absent)}, not vendored in the repository "
                        "(collections/ansible_collections/<ns>/<name>, roles/<name>, or the paths its "
                        "ansible.cfg names; a collection named by its source must say so in the repository "
                        "of its MANIFEST.json or galaxy.yml); hosts never download from Galaxy")
