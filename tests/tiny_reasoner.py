"""A tiny reasoner folder for tests: a 1-layer Llama trained for a few seconds on embedded:arith's
data (so that its greedy chains have lines and answers, unlike a random model's)."""

from __future__ import annotations


def make_tiny_reasoner(path: str, steps: int = 60, seed: int = 0) -> str:
    from hasten.embedded.arith.recipe import ReasonerRecipe, train_reasoner

    recipe = ReasonerRecipe(hidden=16, layers=1, heads=2, intermediate=32, steps=steps, batch_size=16, lr=1e-2,
                            warmup=5, seed=seed, threads=0)
    train_reasoner(recipe, path, progress=False)
    return path
