"""GRPO for policy heads and the discriminator updates (DESIGN.md, "Training: GRPO").

Empty until the main-job issue lands.
"""
