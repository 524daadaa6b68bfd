"""Tokens: signing keys and the JWKS, minting and checking access tokens, the revocation deny list."""
