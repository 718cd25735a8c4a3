"""What the CLI's command modules share: exit codes (sysexits.h), loading the configuration, colour."""

from __future__ import annotations

import argparse
import os
import sys

from agent import config

# sysexits.h. The unit (packaging/systemd/gitops-agent.service) restarts on 75 and never on 78.
EX_USAGE = 64  # a wrong command line
EX_IOERR = 74  # the disk: full, over quota, failing
EX_TEMPFAIL = 75  # another cycle holds the lock: try again later
EX_NOPERM = 77  # not allowed (most commands that change state need root)
EX_CONFIG = 78  # the configuration, or what it points at, is wrong: retrying cannot help
EX_SIGPIPE = 128 + 13  # the reader of our output went away (`status | head`), as a killed C tool would


def load(args: argparse.Namespace) -> config.AgentConfig:
    return config.load(config.config_path(args.config))


def colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def journald() -> bool:
    """Whether stderr goes to journald or a pipe (key=value logs, no progress display), not a person."""
    return bool(os.environ.get("JOURNAL_STREAM")) or not sys.stderr.isatty()

