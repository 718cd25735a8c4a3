"""A generated, realistic role for the benchmarks (never part of the example repo): N tasks cycling
through a directory, a file with fixed content, a template using facts, and a symlink, one play that
gathers facts, as real roles do. `puppet_manifest` declares the same desired state for Puppet.

    make_repo(workdir / "config-repo", tasks=60)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

HOST = "bench01.example.com"
TEMPLATE = "# managed\nhost={{ inventory_hostname }}\nos={{ ansible_facts['distribution'] }}\nitem={{ item_id }}\n"
INVENTORY = f"all:\n  children:\n    bench:\n      hosts:\n        {HOST}:\n"


def _task(i: int) -> str:
    d = f"{{{{ target_root }}}}/srv/bench/d{i // 4:03d}"
    kind = i % 4
    if kind == 0:
        return f"    - name: Directory {i}\n      ansible.builtin.file:\n        path: \"{d}\"\n" \
               f"        state: directory\n        mode: \"0755\"\n"
    if kind == 1:
        return f"    - name: Settings {i}\n      ansible.builtin.copy:\n        dest: \"{d}/settings.conf\"\n" \
               f"        content: \"setting_{i}=on\\n\"\n        mode: \"0644\"\n"
    if kind == 2:
        return f"    - name: Template {i}\n      ansible.builtin.template:\n        src: bench.conf.j2\n" \
               f"        dest: \"{d}/host.conf\"\n        mode: \"0644\"\n      vars:\n        item_id: {i}\n"
    return f"    - name: Link {i}\n      ansible.builtin.file:\n        src: \"{d}/settings.conf\"\n" \
           f"        dest: \"{d}/current.conf\"\n        state: link\n"


def playbook(tasks: int) -> str:
    return ("- name: Bench role\n  hosts: bench\n  gather_facts: true\n  tasks:\n"
            + "".join(_task(i) for i in range(tasks)))


def puppet_manifest(tasks: int, root: Path, distribution: str = "Debian") -> str:
    """The same files, contents and links as playbook(tasks), as Puppet resources."""
    out = []
    for i in range(tasks):
        d = f"{root}/srv/bench/d{i // 4:03d}"
        kind = i % 4
        if kind == 0:
            out.append(f"file {{ '{d}': ensure => directory, mode => '0755' }}")
        elif kind == 1:
            out.append(f"file {{ '{d}/settings.conf': ensure => file, mode => '0644', "
                       f"content => \"setting_{i}=on\\n\" }}")
        elif kind == 2:
            out.append(f"file {{ '{d}/host.conf': ensure => file, mode => '0644', content => "
                       f"\"# managed\\nhost={HOST}\\nos=${{facts['os']['name']}}\\nitem={i}\\n\" }}")
        else:
            out.append(f"file {{ '{d}/current.conf': ensure => link, target => '{d}/settings.conf' }}")
    parents = sorted({f"{root}/srv", f"{root}/srv/bench"})
    return "\n".join([*(f"file {{ '{p}': ensure => directory }}" for p in parents), *out]) + "\n"


def make_repo(repo: Path, tasks: int) -> Path:
    """A committed config repo with role `bench` of `tasks` tasks, host bench01.example.com."""
    files = {"playbooks/bench.yml": playbook(tasks), "playbooks/templates/bench.conf.j2": TEMPLATE,
             "inventory/hosts.yml": INVENTORY}
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench"], check=True)
    return repo
