"""Kubernetes API access: the only package that speaks HTTP to an API server."""
