#!/usr/bin/env python3
"""Build gitops-agent and gitops-collector as .deb (Debian 12) and .rpm (RHEL-family 9) into dist/.

    sudo python3 packaging/build.py [--src DIR] [--out dist] [--no-rpm]

Needs root (chroot, mounts), debootstrap, zstd, dpkg-deb, rpmbuild (for .rpm) and pip access to the
Python package index (or a pip configured with a local wheel mirror, as at an air-gapped build site).
Steps: build the project's wheel; download dependency wheels once (cached); unpack the cached Debian 12
image (tests/harness/image.py) as the build root; make each venv at its final /opt path inside it with
the image's own python3; fail if any build path is left; stage and pack. dist/BUILDINFO.json records
package sizes and timings.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import bundle  # noqa: E402
import clidocs  # noqa: E402
import conffile  # noqa: E402
import deb  # noqa: E402
import rpm  # noqa: E402

from tests.harness import image  # noqa: E402

SMOKE = {
    "gitops-agent":
        "/opt/gitops-agent/bin/python3 -c 'import agent, ansible_runner, ansible.release, git, httpx, yaml'",
    "gitops-collector":
        "/opt/gitops-collector/bin/python3 -c 'import agent, sqlalchemy, uvicorn, starlette, alembic'",
}


# Console scripts of the other package (both come from the one project wheel).
DROP = {"gitops-agent": ("gitops-collector",), "gitops-collector": ("gitops-agent",)}


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=REPO, help="project source tree (default: this one)")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output directory")
    parser.add_argument("--work", type=Path, default=None, help="build directory (default: a temp dir)")
    parser.add_argument("--no-rpm", action="store_true", help="build the .deb packages only")
    parser.add_argument("--only", choices=["gitops-agent", "gitops-collector"], action="append",
                        help="build only this package (repeatable)")
    return parser.parse_args(argv)


def build_all(src: Path, out: Path, work: Path, *, rpm_too: bool, only: list[str]) -> dict[str, object]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    for stale in ("stage", "rpmstage", "rpmbuild", "buildroot"):
        image.remove_tree(work / stale)
    meta = bundle.project_meta(src)
    version = str(meta["version"])
    project = work / "project"
    wheel = bundle.project_wheel(src, project)
    wheels = bundle.dependency_wheels(wheel, meta, image.cache_dir())
    timings["wheels_s"] = time.monotonic() - started

    t0 = time.monotonic()
    root = image.extract(image.ensure_image(), work / "buildroot")
    timings["buildroot_s"] = time.monotonic() - t0
    date = email.utils.formatdate().replace("-0000", "+0000")
    docs = [REPO / "docs/packaging.md", REPO / "docs/air-gapped.md"]
    built: dict[str, dict[str, object]] = {}
    for pkg in (deb.AGENT, deb.COLLECTOR):
        if only and pkg.name not in only:
            continue
        t0 = time.monotonic()
        prefix = f"/opt/{pkg.name}"
        requirement = "gitops-agent" if pkg is deb.AGENT else "gitops-agent[collector]"
        tree = bundle.build_venv(root, prefix=prefix, requirement=requirement, wheels=wheels, project=project,
                               smoke=SMOKE[pkg.name], drop=DROP[pkg.name])
        bundle.check_no_build_paths(tree, [str(root), str(work), str(src), str(REPO), str(image.cache_dir()),
                                         *bundle.MOUNTS], prefix=prefix)
        stage = work / "stage" / pkg.name
        deb.stage_common(stage, pkg, venv=tree, version=version, date=date, docs=docs)
        if pkg.name in clidocs.PARSERS:  # man page, bash and zsh completions from the parser
            clidocs.stage(stage, pkg.name, version=version, date=time.strftime("%Y-%m-%d", time.gmtime()))
        if pkg is deb.AGENT:
            deb.stage_agent_extras(stage, conffile.render(src))
        else:
            deb.stage_collector_extras(stage)
        info: dict[str, object] = {"deb": str(deb.build(stage, pkg, version=version, out=out))}
        if rpm_too:
            rpm_stage = rpm.restage(stage, work / "rpmstage" / pkg.name)
            bundle.retarget_for_rpm(rpm_stage / prefix.lstrip("/"), prefix=prefix)
            info["rpm"] = str(rpm.build(rpm_stage, name=pkg.name, version=version, summary=pkg.summary,
                                        description=pkg.description, out=out, work=work))
        info["build_s"] = round(time.monotonic() - t0, 1)
        info["sizes"] = {kind: Path(str(path)).stat().st_size for kind, path in info.items()
                         if kind in ("deb", "rpm")}
        info["venv_bytes"] = sum(p.stat().st_size for p in tree.rglob("*")
                                 if p.is_file() and not p.is_symlink())
        built[pkg.name] = info
    timings["total_s"] = time.monotonic() - started
    return {"version": version, "packages": built, "timings": {k: round(v, 1) for k, v in timings.items()}}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gitops-pkg-") as tmp:
        work = args.work or Path(tmp)
        try:
            result = build_all(args.src.resolve(), args.out.resolve(), work.resolve(),
                               rpm_too=not args.no_rpm, only=args.only or [])
        finally:
            image.remove_tree(work / "buildroot")
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
    (args.out / "BUILDINFO.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
