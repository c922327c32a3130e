"""Gymnasium environments over the frozen generators (``hasten/Denoising-v0``, ``hasten/Reasoning-v0``).

See DESIGN.md, "Environments". Empty until the main-job issue lands: nothing is registered yet.
"""
