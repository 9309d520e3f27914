"""gRPC plumbing every service shares: mTLS, health, reflection, metrics, graceful shutdown."""
