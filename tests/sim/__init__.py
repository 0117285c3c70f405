"""Simulation support: an in-memory network on a simulated clock, and a cluster on it."""
