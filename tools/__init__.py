"""``dds-admin`` and its parts: placement, init, status, local clusters, bench (DESIGN §11)."""
