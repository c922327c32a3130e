"""The embedded models and their recipes: each folder holds a data set, the training recipe that
``hasten generator train`` / ``hasten reasoner train`` runs, and the shipped weights (``weights/``).

- :mod:`hasten.embedded.shapes`: ``embedded:shapes``, a class-conditional FLUX-architecture
  generator of procedural shapes, and its evaluation classifier.
- :mod:`hasten.embedded.arith`: ``embedded:arith``, a small Llama that reasons step by step about
  procedural arithmetic problems.
"""
