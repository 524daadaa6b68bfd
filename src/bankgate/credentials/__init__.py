"""Credentials: API key pairs (clients), their secrets, and the scope rules."""
