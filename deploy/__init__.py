"""Deployment artefacts (containers, Compose, Kubernetes, Prometheus, Grafana) and the tools that check them."""
