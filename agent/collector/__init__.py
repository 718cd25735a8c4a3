"""gitops-collector: ingest API, query API and storage for agent reports.

Imports from the agent side are limited to `agent.report`, `agent.errors` and `agent.fsutil`
(an import-linter contract enforces it).
"""
