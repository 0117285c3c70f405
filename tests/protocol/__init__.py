"""Protocol tests: RPC, two-phase commit and map repair over the in-memory network."""
