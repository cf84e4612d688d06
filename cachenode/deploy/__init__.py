"""Deployment artifacts: Kubernetes manifests and a Grafana dashboard, rendered by `cachenode deploy`."""
