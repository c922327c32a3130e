"""Rollout pools (in-process, Ray) and the trajectory batch (DESIGN.md, "Rollouts").

Empty until the main-job issue lands.
"""
