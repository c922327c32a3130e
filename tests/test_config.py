import pytest

from hasten.config import apply_overrides, from_dict
from hasten.errors import HastenError
from hasten.embedded.shapes.recipe import GeneratorTrainConfig


def test_unknown_key_and_wrong_type_name_the_field():
    with pytest.raises(HastenError, match=r"gen.yaml: unknown field\(s\) \['stepz'\]"):
        from_dict(GeneratorTrainConfig, {"stepz": 3}, "gen.yaml")
    with pytest.raises(HastenError, match="gen.yaml: steps: expected an integer, got 'many'"):
        from_dict(GeneratorTrainConfig, {"steps": "many"}, "gen.yaml")


def test_post_init_checks_carry_the_source():
    with pytest.raises(HastenError, match="gen.yaml: label_dropout=1.5"):
        from_dict(GeneratorTrainConfig, {"label_dropout": 1.5}, "gen.yaml")
    with pytest.raises(HastenError, match="attention_head_dim=24"):
        from_dict(GeneratorTrainConfig, {"attention_head_dim": 24}, "gen.yaml")


def test_overrides_parse_yaml_scalars():
    data = apply_overrides({"steps": 10}, ["steps=20", "lr=1e-3", "a.b=true"])
    assert data["steps"] == 20 and data["a"] == {"b": True}
    assert from_dict(GeneratorTrainConfig, {"lr": data["lr"]}, "x").lr == 1e-3
    assert from_dict(GeneratorTrainConfig, {"lr": 1}, "x").lr == 1.0
    with pytest.raises(HastenError, match="expected key=value"):
        apply_overrides({}, ["steps"])


def test_shipped_recipe_file_matches_the_defaults():
    import os
    from dataclasses import asdict

    from hasten.config import load_document

    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "shapes_generator.yaml")
    config = from_dict(GeneratorTrainConfig, load_document(path), path)
    assert asdict(config) == asdict(GeneratorTrainConfig())
