"""Executors run a planned build somewhere (the host, or a Kubernetes Job) and report back."""
