"""Reward registry and its terms: fidelity, cost, discriminator, correctness (DESIGN.md, "Rewards").

Empty until the main-job issue lands.
"""
