"""/etc/gitops-agent/agent.yaml, generated from the settings table (agent.config.SETTINGS).

Every setting is shown commented out with its default, so the shipped conffile changes only when the
table does, and an admin's edited copy rarely meets a conffile prompt on upgrade.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HEADER = """\
# gitops-agent configuration (YAML). Read by `gitops-agent` and by gitops-agent.service.
# Every setting is listed with its default, commented out. Only source.url has no default: set it,
# then start the service with `systemctl start gitops-agent` (or check one run first with
# `gitops-agent run --check`). Unknown keys and wrong types are refused with one line naming the key.
# This file is a dpkg conffile (%config(noreplace) in the .rpm): upgrades keep your edits.
"""
EXAMPLES = {"source.url": "https://git.example.com/ops/fleet.git"}


def _value(value: Any) -> str:
    text: str = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").strip()


def render(src: Path) -> str:
    sys.path.insert(0, str(src))
    try:
        from agent import config
    finally:
        sys.path.pop(0)
    lines = [HEADER]
    section = None
    for setting in config.SETTINGS:
        head, _, tail = setting.name.partition(".")
        required = setting.default is config.REQUIRED
        value = EXAMPLES.get(setting.name, "") if required else setting.default
        note = " (required)" if required else ""
        if tail:
            if head != section:
                lines.append(f"\n#{head}:")
                section = head
            lines.append(f"#  # {setting.help}{note}")
            lines.append(f"#  {tail}: {_value(value)}")
        else:
            if section is not None:
                lines.append("")
            section = None
            lines.append(f"# {setting.help}{note}")
            lines.append(f"#{head}: {_value(value)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1]))
