"""Policy heads, their save/load and the ``accelerate(...)`` inference plug-in (DESIGN.md, "Policies").

Empty until the main-job issue lands.
"""
