"""Rollouts (docs/rollout.md): the policy each commit rolls out under, when each wave met its criteria,
operators' actions (halt, resume, skip) and approvals of plans.

- `rollout_policies`: the parsed `rollout.yml` of a commit as the hosts reported it, keyed by commit and
  policy digest, with when the collector first saw the pair (the first wave opens then).
- `rollout_waves`: the first time a wave met the criteria of the wave after it; never moved back.
- `rollout_actions`: every halt, resume and skip, automatic or by hand: who, when, why (an audit log).
- `rollout_approvals`: one row per approved (commit, plan digest); one approval covers every host whose
  plan has that digest.
- `rollout_hosts`: each host's latest outcome on a (commit, policy digest), from its latest report with a
  rollout block: its wave, outcome (converged, failed, pending), plan digest, the run, and the wave
  sizes it computed (the wave counts are a query over this table).

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SHA, DIGEST, NAME = 64, 64, 63


def upgrade() -> None:
    op.create_table(
        "rollout_policies",
        sa.Column("commit", sa.String(SHA), primary_key=True),
        sa.Column("policy_digest", sa.String(DIGEST), primary_key=True),
        sa.Column("policy_json", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "rollout_waves",
        sa.Column("commit", sa.String(SHA), primary_key=True),
        sa.Column("policy_digest", sa.String(DIGEST), primary_key=True),
        sa.Column("wave", sa.String(NAME), primary_key=True),
        sa.Column("criteria_met_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "rollout_actions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("commit", sa.String(SHA), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("wave", sa.String(NAME), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_rollout_actions_commit_at", "rollout_actions", ["commit", "at"])
    op.create_table(
        "rollout_approvals",
        sa.Column("commit", sa.String(SHA), primary_key=True),
        sa.Column("plan_digest", sa.String(DIGEST), primary_key=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_table(
        "rollout_hosts",
        sa.Column("commit", sa.String(SHA), primary_key=True),
        sa.Column("policy_digest", sa.String(DIGEST), primary_key=True),
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("wave", sa.String(NAME), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("gate", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("plan_digest", sa.String(DIGEST), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("wave_sizes", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in ("rollout_hosts", "rollout_approvals", "rollout_actions", "rollout_waves",
                  "rollout_policies"):
        op.drop_table(table)
