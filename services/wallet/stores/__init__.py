"""The app stores' verifiers (ports.StoreVerifier) and their notification endpoints."""
