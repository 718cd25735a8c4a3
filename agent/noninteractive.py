"""Run a program the way cron would: no controlling terminal, stdin from /dev/null.

    python -I -S noninteractive.py [--unset NAME,NAME] -- PROGRAM [ARGS...]

agent.runner starts Ansible through this file. ansible-runner gives Ansible a pseudo-terminal (pexpect)
to read its output; with a terminal there, `vars_prompt`, `pause`, `ssh` host-key questions and
`su`/`sudo` password prompts would wait for an answer until the run's timeout. Without one, Ansible and
the programs it starts behave as under cron: vars_prompt and pause say they are not prompting and go on;
a program that needs /dev/tty fails at once. The process keeps its pid and process group (it drops the
terminal with TIOCNOTTY, then execs), so ansible-runner's timeout and cancel still kill the whole group,
and stdout/stderr still reach ansible-runner. `--unset` removes variables from the environment first
(the agent's own ANSIBLE_* settings, which must not leak into the run). Standard library only: it runs
with -I -S, before anything of the agent is importable.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import termios


def drop_terminal() -> None:
    """Give up the controlling terminal, if there is one, and read stdin from /dev/null."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        tty = -1  # no controlling terminal
    if tty >= 0:
        # A session leader that drops its terminal sends SIGHUP to its own process group: ignore it then.
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            fcntl.ioctl(tty, termios.TIOCNOTTY)
        except OSError:
            pass
        finally:
            signal.signal(signal.SIGHUP, previous)
        os.close(tty)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--unset"]:
        for name in argv[1].split(","):
            os.environ.pop(name, None)
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit("usage: noninteractive.py [--unset NAME,NAME] -- PROGRAM [ARGS...]")
    drop_terminal()
    os.execv(argv[0], argv)  # noqa: S606 - exec'ing the given program is the whole point


if __name__ == "__main__":
    main(sys.argv[1:])
