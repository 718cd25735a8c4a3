"""gitops-collector: ingest API, query API, web UI and metrics over a SQL database."""
