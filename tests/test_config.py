"""Typed configs: YAML recipes, key=value overrides, and errors that name the key."""
import json
from pathlib import Path

import pytest

from multidiff.train.config import Config, ConfigError, config_from_json, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_fill_params():
    config = load_config(None)
    assert config.model.name == "toy_mlp"
    # the entry's defaults are filled in, so the resolved config is complete
    assert config.model.params == {"hidden": 128, "depth": 3, "emb_dim": 64}
    assert config.data.params["n_modes"] == 8


def test_recipe_and_overrides(tmp_path):
    config = load_config(REPO / "recipes/toy/gmm.yaml",
                         ["trainer.batch_size=512", "optimizer.betas=[0.8, 0.9]", "model.params.hidden=64",
                          "trainer.ema.kind=halflife", "optimizer.lr=1e-3", "sampling.sigma_max=null"])
    assert config.trainer.batch_size == 512
    assert config.optimizer.betas == (0.8, 0.9)
    assert config.model.params["hidden"] == 64
    assert config.trainer.ema.kind == "halflife"
    assert config.optimizer.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string: accepted for floats
    assert config.sampling.sigma_max is None
    assert config.objective.schedule.sigma_data == 0.6


def test_parse_override_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("trainer.batch_size")


@pytest.mark.parametrize("override, key, fragment", [
    ("trainer.batch_sise=3", "trainer.batch_sise", "did you mean 'batch_size'"),
    ("trainer.ema.halflife=3", "trainer.ema.halflife", "unknown key"),
    ("nonsense.x=1", "nonsense", "unknown key"),
    ("model.params.hiden=64", "model.params.hiden", "did you mean 'hidden'"),
    ("data.params.modes=3", "data.params.modes", "unknown key"),
])
def test_unknown_key_names_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key
    assert fragment in str(e.value) and key in str(e.value)


@pytest.mark.parametrize("override, key, fragment", [
    ("trainer.batch_size=abc", "trainer.batch_size", "expected int"),
    ("trainer.batch_size=2.5", "trainer.batch_size", "expected int"),
    ("trainer.progress=3", "trainer.progress", "expected bool"),
    ("optimizer.lr=fast", "optimizer.lr", "expected float"),
    ("optimizer.betas=[0.9]", "optimizer.betas", "expected 2 values"),
    ("model.params.hidden=wide", "model.params.hidden", "expected int"),
    ("trainer.ema=3", "trainer.ema", "expected a mapping"),
    ("objective.schedule.sigma_min=low", "objective.schedule.sigma_min", "expected float"),
])
def test_wrong_type_names_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key
    assert fragment in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("model.name=unet9000", "model.name"),
    ("data.name=imagenet", "data.name"),
    ("objective.prediction=score", "objective.prediction"),
    ("objective.weighting=heavy", "objective.weighting"),
    ("objective.schedule.name=cosine", "objective.schedule.name"),
    ("trainer.mixed_precision=fp8", "trainer.mixed_precision"),
    ("sampling.sampler=magic", "sampling.sampler"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.ema.std=0.5", "trainer.ema.std"),
    ("objective.cond_drop_prob=1.5", "objective.cond_drop_prob"),
])
def test_bad_choice_or_range_names_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key


def test_missing_data_path_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"data.path={tmp_path / 'nope.npy'}"])
    assert e.value.key == "data.path" and "no such file" in str(e.value)


def test_batch_must_divide_into_accumulation():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["trainer.batch_size=10", "trainer.grad_accum=4"])
    assert e.value.key == "trainer.batch_size"


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["trainer.seed.x=1"])
    assert e.value.key == "trainer.seed"


def test_recipe_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  batch_size: 64\n  epochs: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(typo)
    assert e.value.key == "trainer.epochs"


def test_json_round_trip():
    config = load_config(REPO / "recipes/toy/gmm.yaml")
    again = config_from_json(json.loads(config.to_json()))
    assert again == config
    assert isinstance(again, Config)


RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "results" not in p.parts)  # results/: table specs


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_shipped_recipe_parses_and_validates(recipe):
    """Every recipe YAML parses into the typed config and passes validation against the registries
    (paths to data and runs are not required to exist here): a key that a refactor renamed or a
    typo in a new recipe fails here, not after a user's 30-minute run has started."""
    import multidiff.audio.registry  # noqa: F401  (registers the modalities' models and data sets)
    import multidiff.shapes.registry  # noqa: F401
    import multidiff.video.registry  # noqa: F401

    config = load_config(recipe, validate_paths=False)
    assert config.model.name and config.data.name and config.trainer.duration_samples > 0


# ------------------------------------------------------------------ trackers and run-folder pictures
def test_trackers_by_name_and_a_missing_package_is_named(monkeypatch):
    import importlib.util

    from multidiff.train.config import TRACKERS

    assert {"tensorboard", "wandb", "mlflow", "none"} <= set(TRACKERS)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"trainer.tracker.*'mlflow' needs the mlflow package \(pip install mlflow\)"):
        load_config(None, ["trainer.tracker=mlflow"])
    with pytest.raises(ConfigError, match="unknown tracker 'wandbb'; did you mean 'wandb'"):
        load_config(None, ["trainer.tracker=wandbb"])


def test_distillation_needs_a_teacher_and_steps(tmp_path):
    with pytest.raises(ConfigError, match="objective.distillation.teacher.*needs the teacher checkpoint"):
        load_config(None, ["objective.kind=distillation", "objective.distillation.student_steps=4"])
    with pytest.raises(ConfigError, match="objective.distillation.teacher.*no such file"):
        load_config(None, ["objective.kind=distillation", f"objective.distillation.teacher={tmp_path / 'nope'}",
                           "objective.distillation.student_steps=4"])
    with pytest.raises(ConfigError, match="objective.distillation.student_steps.*must be >= 1"):
        load_config(None, ["objective.kind=distillation", f"objective.distillation.teacher={tmp_path}"])
    with pytest.raises(ConfigError, match="model.init_from.*starts the student from its teacher"):
        load_config(None, ["objective.kind=distillation", f"objective.distillation.teacher={tmp_path}",
                           "objective.distillation.student_steps=2"])
    with pytest.raises(ConfigError, match="sampling.sampler.*consistency sampler, not 'heun'"):
        load_config(None, ["objective.kind=consistency", "sampling.sampler=heun"])
