"""Sealing of original pixels and key escrow (identities, HPKE wrapping, vault, audit log)."""
