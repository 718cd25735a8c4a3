"""gitops-collector: ingest API, query API, web UI, alerts and storage for agent reports.

From the agent side it imports only `agent.errors`, `agent.report`, `agent.redact` and
`agent.rollout` (shared pure modules) and the root package's __version__; an import-linter contract in
pyproject.toml forbids every other module under agent/, and tests/collector/test_collector_contracts.py
keeps that list complete. The parts and which may import which: docs/collector.md, "Architecture".
"""
