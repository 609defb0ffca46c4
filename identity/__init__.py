"""The broker's domain: config, token verification, claim mapping, vending. Never imports Flask."""
