"""The inventory graph cache: one `ansible-inventory` per commit, none for dynamic inventories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent import invcache


def counting(text: str = "@all:\n  |--host1\n") -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def parse() -> str:
        calls.append(1)
        return text

    return calls, parse


def test_static_inventory_is_parsed_once_per_commit_and_host(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text("all:\n  hosts:\n    host1:\n")
    calls, parse = counting()
    cache = tmp_path / "cache"
    for commit, host in (("a" * 40, "host1"), ("a" * 40, "host1"), ("b" * 40, "host1"), ("b" * 40, "host2")):
        assert invcache.graph(cache, commit=commit, inventory_name="inventory", host=host,
                              inventory=inventory, parse=parse) == "@all:\n  |--host1\n"
    assert len(calls) == 3  # the second look at commit a came from the cache


def test_dynamic_inventories_are_never_cached(tmp_path: Path) -> None:
    script_dir, plugin_dir = tmp_path / "scripted", tmp_path / "plugin"
    script_dir.mkdir()
    plugin_dir.mkdir()
    (script_dir / "cmdb.py").write_text("#!/usr/bin/env python3\nprint('{}')\n")
    (script_dir / "cmdb.py").chmod(0o755)
    (plugin_dir / "aws_ec2.yml").write_text("---\nplugin: amazon.aws.aws_ec2\nregions: [eu-west-1]\n")
    (plugin_dir / "static.yml").write_text("all:\n  vars:\n    plugin: not-a-plugin-key\n")
    for inventory in (script_dir, plugin_dir):
        assert invcache.is_dynamic(inventory)
        calls, parse = counting()
        for _ in range(2):
            invcache.graph(tmp_path / "cache", commit="c" * 40, inventory_name=inventory.name, host="h",
                           inventory=inventory, parse=parse)
        assert len(calls) == 2
    assert not invcache.is_dynamic(plugin_dir / "static.yml")
