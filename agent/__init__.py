"""gitops-agent: keep hosts in the state their Git repository declares."""

__version__ = "0.1.0"
