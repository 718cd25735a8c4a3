"""Ansible strategy plugin (runs inside ansible-playbook): mitogen's linear strategy, with Ansible's rule
for privilege escalation on the local connection.

Ansible's `local` connection runs tasks as the user running Ansible, whatever remote_user or ansible_user
say, and Ansible skips `become` when that user already is the become user: root with `become: true` on a
host without sudo just runs the task. mitogen 0.3 compares become_user with the configured remote user
instead (unset for local), so it starts `sudo` and every such task fails ("Child start failed: ... No such
file or directory: 'sudo'"). This plugin gives mitogen Ansible's answer for local connections and is
otherwise mitogen_linear itself. agent.runner selects it for `ansible.strategy: mitogen` and puts
mitogen's own strategy folder after this one on the strategy plugin path.
"""

from __future__ import annotations

import getpass
from typing import Any

import ansible_mitogen.transport_config as transport_config  # type: ignore[import-untyped]
from ansible.plugins.loader import strategy_loader

_configured_user = transport_config.PlayContextSpec.remote_user


def _remote_user(spec: Any) -> Any:
    if spec.transport() == "local":  # Ansible's local connection: always the user running Ansible
        return getpass.getuser()
    return _configured_user(spec)


transport_config.PlayContextSpec.remote_user = _remote_user
_MitogenLinear = strategy_loader.get("mitogen_linear", class_only=True)


class StrategyModule(_MitogenLinear):  # type: ignore[misc,valid-type]
    """mitogen_linear, with the local connection's user as Ansible has it."""
