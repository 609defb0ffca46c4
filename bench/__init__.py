"""The load benchmark of the broker's hot path (DESIGN §7): ``python -m bench``."""
