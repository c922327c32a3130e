"""The recipes ``hasten generator train`` and ``hasten generator train-classifier`` run, by the
``recipe`` field of their config (default ``shapes``): name -> (config dataclass, train function).
A recipe is added here, once.
"""

from __future__ import annotations

from hasten.errors import HastenError


def generator_recipes() -> dict:
    from hasten.embedded.clips.recipe import ClipsGeneratorConfig, train_generator as train_clips
    from hasten.embedded.shapes.recipe import GeneratorTrainConfig, train_generator as train_shapes
    from hasten.tasks.unmasking.recipe import DLLMRecipe, train_dllm

    return {"shapes": (GeneratorTrainConfig, train_shapes), "clips": (ClipsGeneratorConfig, train_clips),
            "dllm": (DLLMRecipe, train_dllm)}


def classifier_recipes() -> dict:
    from hasten.embedded.clips.classifier import ClipsClassifierConfig, train_clips_classifier
    from hasten.embedded.shapes.classifier import ClassifierTrainConfig, train_classifier

    return {"shapes": (ClassifierTrainConfig, train_classifier), "clips": (ClipsClassifierConfig, train_clips_classifier)}


def generator_recipe(data: dict, source: str, recipes: dict | None = None):
    """(config, train function) of a config document (its ``recipe`` field picks the recipe among
    ``recipes``, the generator recipes by default)."""
    from hasten.config import from_dict

    recipes = generator_recipes() if recipes is None else recipes
    name = data.get("recipe", "shapes")
    if name not in recipes:
        raise HastenError(f"{source}: recipe={name!r}: expected one of {sorted(recipes)}")
    config_class, train = recipes[name]
    fields = dict(data)
    if name == "shapes":  # the shapes config has no recipe field (its shipped configs predate it)
        fields.pop("recipe", None)
    return from_dict(config_class, fields, source=source), train
