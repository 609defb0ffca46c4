"""The embedded demo: an in-process AWS (moto), a development OIDC provider and the broker,
all on loopback. Used by ``chime-broker demo`` and, through the same code, by the tests."""
