"""The cost of loading every role's playbook before a check (the agent's per-role syntax check):
`ansible-playbook --syntax-check` of all a host's playbooks in one run (what every cycle pays), and of
each alone (what a cycle pays only when that first run fails, to find the broken roles).

    .venv/bin/python bench/syntax_check.py [--roles 1 3 6] [--tasks 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import BIN, Timing, median, timed

PLAY = """\
- name: {role}
  hosts: {role}
  gather_facts: false
  tasks:
{tasks}
"""
TASK = """\
    - name: {role} file {i}
      ansible.builtin.copy:
        dest: "/tmp/never/{role}-{i}"
        content: "{i}\\n"
        mode: "0644"
"""


def write_roles(root: Path, roles: int, tasks: int) -> list[Path]:
    names = [f"role{r}" for r in range(roles)]
    (root / "inventory.yml").write_text("all:\n  children:\n" + "".join(
        f"    {n}:\n      hosts:\n        h1:\n" for n in names))
    books = []
    for name in names:
        book = root / f"{name}.yml"
        book.write_text(PLAY.format(role=name, tasks="".join(TASK.format(role=name, i=i) for i in range(tasks))))
        books.append(book)
    return books


def check(root: Path, books: list[Path]) -> Timing:
    return timed([str(BIN / "ansible-playbook"), "--syntax-check", "-i", str(root / "inventory.yml"),
                  *map(str, books)], ok=(0, 1, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roles", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"ansible-playbook --syntax-check, {args.tasks} tasks per role, median of {args.runs}:")
    print(f"  {'roles':>5} {'together wall':>14} {'together cpu':>13} {'each alone wall':>16} {'each alone cpu':>15}")
    for roles in args.roles:
        with tempfile.TemporaryDirectory(prefix="gitops-bench-syntax-") as tmp:
            root = Path(tmp)
            books = write_roles(root, roles, args.tasks)
            together = [check(root, books) for _ in range(args.runs)]
            alone = [Timing(sum(t.wall_s for t in ts), sum(t.cpu_s for t in ts))
                     for ts in ([check(root, [b]) for b in books] for _ in range(args.runs))]
        print(f"  {roles:>5} {median([t.wall_s for t in together]):>13.2f}s "
              f"{median([t.cpu_s for t in together]):>12.2f}s {median([t.wall_s for t in alone]):>15.2f}s "
              f"{median([t.cpu_s for t in alone]):>14.2f}s")


if __name__ == "__main__":
    main()
