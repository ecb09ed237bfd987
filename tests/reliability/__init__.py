"""Reliability and security tests: auth, TLS, hostile input, faults, fuzzing and a short soak."""
