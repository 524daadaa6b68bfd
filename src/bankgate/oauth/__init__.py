"""The OAuth 2.0 HTTP endpoints: token, introspection, revocation, metadata, JWKS."""
