"""gRPC plumbing shared by both services: error mapping, auth, health, reflection, TLS, graceful shutdown."""
