"""radforge.config.load_model: the one loader, layered, with one error line per problem naming its source."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from radforge.config import ConfigError, LayeredConfig, load_model
from radforge.ingest.config import load_config
from radforge.services.app.settings import SettingsError, load_settings
from radforge.trainer.recipe import RecipeConfigError, load_recipe
from radforge.trainer.run_config import TrainConfigError, load_train_config


class Optim(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.1, gt=0)


class Run(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = 10
    name: str = "run"
    token: SecretStr | None = None
    optim: Optim = Optim()


class RunError(ConfigError):
    pass


RUN_FILE = "data: {mix: {sources: [{uri: /data/a}]}}\noutput: /tmp/out\n"  # the least a run file needs
NOT_AN_INT = "Input should be a valid integer, unable to parse string as an integer"
ENV = {"RUN_STEPS": "steps", "RUN_LR": "optim.lr", "RUN_TOKEN": "token"}


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "run.yaml"
    f.write_text(text)
    return f


def test_layers_in_order_defaults_file_environment_overrides(tmp_path: Path) -> None:
    f = write(tmp_path, "steps: 20\nname: from-file\noptim: {lr: 0.5}\n")
    run = load_model(Run, f, env=ENV, environ={"RUN_STEPS": "30", "RUN_LR": ""}, overrides=["name=cli"])
    assert (run.steps, run.name, run.optim.lr) == (30, "cli", 0.5)  # an empty variable is unset
    assert load_model(Run) == Run()


def test_a_bad_override_is_named_as_typed(tmp_path: Path) -> None:
    f = write(tmp_path, "steps: 20\n")
    with pytest.raises(RunError) as e:
        load_model(Run, f, overrides=["name=x", "steps=abc"], error=RunError)
    assert str(e.value) == "override steps=abc: steps: " + NOT_AN_INT
    with pytest.raises(ConfigError) as e:
        load_model(Run, overrides={"optim": {"lr": -1}})
    assert str(e.value) == "override optim.lr=-1: optim.lr: Input should be greater than 0"


def test_a_bad_file_field_names_the_file_and_the_value(tmp_path: Path) -> None:
    f = write(tmp_path, "steps: 20\noptim:\n  lr: fast\n  momentum: 0.9\n")
    with pytest.raises(ConfigError) as e:
        load_model(Run, f, overrides=["steps=5"])
    message = str(e.value)
    assert message == (
        f"{f}: optim.lr: Input should be a valid number, unable to parse string as a number (got 'fast'); "
        f"{f}: optim.momentum: Extra inputs are not permitted (got 0.9)"
    )
    assert "pydantic" not in message and "\n" not in message


def test_a_bad_environment_variable_is_named(tmp_path: Path) -> None:
    f = write(tmp_path, "steps: 20\n")
    with pytest.raises(ConfigError) as e:
        load_model(Run, f, env=ENV, environ={"RUN_STEPS": "many"})
    assert str(e.value) == f"$RUN_STEPS: steps: {NOT_AN_INT} (got 'many')"


def test_an_override_shadows_the_file_it_replaces_in_the_message(tmp_path: Path) -> None:
    f = write(tmp_path, "optim: {lr: 0.5}\n")
    with pytest.raises(ConfigError, match=r"^override optim=3: optim: Input should be a valid dictionary"):
        load_model(Run, f, overrides=["optim=3"])


def test_secrets_are_never_echoed() -> None:
    with pytest.raises(ConfigError) as e:
        load_model(
            Run, env=ENV, environ={"RUN_TOKEN": "hunter2-hunter2"}, overrides=["steps=x"], secrets=["token"]
        )
    assert "hunter2" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_model(Run, overrides=["token=[hunter2-hunter2]"], secrets=["token"])
    assert "hunter2" not in str(e.value) and "token" in str(e.value)


def test_plumbing_errors_use_the_config_error_type(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"run.yaml: not valid YAML"):
        load_model(Run, write(tmp_path, "steps: [1\n"), error=RunError)
    with pytest.raises(RunError, match=r"cannot read run config file"):
        load_model(Run, tmp_path / "missing.yaml", error=RunError, what="run config")
    with pytest.raises(RunError, match=r"override 'steps' is not of the form section.field=value"):
        load_model(Run, overrides=["steps"], error=RunError)


def test_a_layer_laid_under_is_overridden_and_named(tmp_path: Path) -> None:
    layers = LayeredConfig()
    layers.lay({"optim": {"lr": 0.2}}, "run.yaml")
    layers.lay_under({"optim": {"lr": 0.3}, "steps": "lots"}, "base.yaml")
    assert layers.tree == {"optim": {"lr": 0.2}, "steps": "lots"}
    assert layers.sources(("optim", "lr")) == ["run.yaml"]
    with pytest.raises(ConfigError, match=r"^base.yaml: steps: Input should be a valid integer"):
        layers.validate(Run)


def test_every_config_of_the_project_formats_errors_the_same_way(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^override shards.size_limit=abc: shards.size_limit: Input"):
        load_config(overrides={"shards": {"size_limit": "abc"}})
    with pytest.raises(ConfigError, match=r"^override planes=\[axial, oblique\]: planes.1: Input should be"):
        load_config(overrides={"planes": ["axial", "oblique"]})  # `--set` arrives parsed: shown as YAML
    with pytest.raises(RecipeConfigError, match=r"^override optim.base_lr=abc: optim.base_lr: Input should"):
        load_recipe(overrides=["optim.base_lr=abc"])
    run = write(tmp_path, RUN_FILE + "steps: abc\n")
    with pytest.raises(TrainConfigError, match=rf"^{run}: steps: {NOT_AN_INT} \(got 'abc'\)$"):
        load_train_config(run)
    with pytest.raises(SettingsError, match=r"^override port=http: port: Input should be a valid integer"):
        load_settings(overrides={"port": "http"}, environ={"RADFORGE_STATE_DIR": "/tmp/x"})
    with pytest.raises(SettingsError, match=r"^\$RADFORGE_DATABASE_URL: database_url: scheme 'mysql' is not"):
        load_settings(environ={"RADFORGE_DATABASE_URL": "mysql://db/radforge"})
    assert issubclass(TrainConfigError, ConfigError) and issubclass(RecipeConfigError, ConfigError)


def test_a_run_recipe_file_is_laid_under_the_run_and_named(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text("optim: {base_lr: slow}\nloss: {koleo_weight: 0.5}\n")
    run = write(tmp_path, RUN_FILE + "recipe_file: recipe.yaml\n")
    run.write_text(run.read_text() + "recipe: {loss: {koleo_weight: 0}}\n")
    with pytest.raises(TrainConfigError) as e:
        load_train_config(run)
    assert str(e.value).startswith(f"{tmp_path / 'recipe.yaml'}: recipe.optim.base_lr: Input should be")
    cfg = load_train_config(run, overrides=["recipe.optim.base_lr=0.01"])
    assert cfg.recipe.loss.koleo_weight == 0 and cfg.recipe.optim.base_lr == 0.01
    assert cfg.recipe_file == str(tmp_path / "recipe.yaml")


def test_the_command_line_prints_the_override_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    from radforge.cli import EXIT_USAGE, main

    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
    assert main(["train", "--config", str(tiny), "--no-ray", "steps=abc"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == f"radforge: invalid configuration: override steps=abc: steps: {NOT_AN_INT}"
