"""Multi-host tests: DDS bricks on network-namespace hosts (``pytest -m multihost``)."""
