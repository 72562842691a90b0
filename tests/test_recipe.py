"""Recipes: parsing, defaults, overrides and every validation message."""

from pathlib import Path

import pytest

from langinterp import schema
from langinterp.cli import run
from langinterp.errors import UsageError
from langinterp.recipe import load_recipe, parse_override, recipe_from_values, resolve

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_recipe_is_valid() -> None:
    paths = sorted(RECIPES.glob("*.toml"))
    assert paths, "recipes/ holds no recipes"
    for path in paths:
        recipe = load_recipe(path)
        assert recipe.name == path.stem
        assert recipe.model["type"] in schema.MODEL_TABLES


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "[model]\ntype = 'mlp'\n"))
    assert recipe.data["books"] == [50133]
    assert recipe.data["kind"] == "sequence"
    assert recipe.trainer["max_steps"] == -1
    assert recipe.model["hidden"]["width"] == 200
    assert recipe.get("optimizer.name") == "lion"


def test_required_keys_exist() -> None:
    keys = schema.flatten(schema.recipe_table("mlp"))
    for key in (
        "data.books",
        "data.kind",
        "data.context",
        "model.type",
        "trainer.max_epochs",
        "trainer.max_steps",
        "trainer.batch_size",
        "trainer.seed",
    ):
        assert key in keys


def test_overrides_take_toml_literals_and_bare_strings(tmp_path: Path) -> None:
    recipe = load_recipe(
        RECIPES / "sparse_mlp.toml",
        [
            "model.hidden.width=250",
            "optimizer.lr=1e-3",
            "data.books=[84, 43]",
            "data.kind=centered",
            "data.context=11",
            "trainer.max_epochs=3",
        ],
    )
    assert recipe.model["hidden"]["width"] == 250
    assert recipe.optimizer["lr"] == pytest.approx(1e-3)
    assert recipe.data["books"] == [84, 43]
    assert recipe.data["kind"] == "centered"
    assert recipe.trainer["max_epochs"] == 3


def test_integer_is_accepted_where_a_float_is_expected() -> None:
    recipe = resolve({}, ["optimizer.lr=1"])
    assert recipe.optimizer["lr"] == 1.0 and isinstance(recipe.optimizer["lr"], float)


def test_parse_override_needs_an_equals_sign() -> None:
    assert parse_override("a.b = [1, 'x']") == ("a.b", [1, "x"])
    with pytest.raises(UsageError, match="key=value"):
        parse_override("model.hidden.width")


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match=r"unknown key 'model.hidden.widht' \(did you mean 'model.hidden.width'\?\)"
    ):
        load_recipe(RECIPES / "sparse_mlp.toml", ["model.hidden.widht=3"])


def test_unknown_table_names_the_full_key_given_on_the_command_line() -> None:
    with pytest.raises(
        UsageError,
        match=r"unknown key 'model.hiden.width' \(did you mean 'model.hidden.width'\?\) "
        r"\(from the command line\)",
    ):
        load_recipe(RECIPES / "sparse_mlp.toml", ["model.hiden.width=3"])


def test_unknown_key_in_a_file_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[data]\ncontext = 8\n\n[trainer]\nbatch_sise = 10\n")
    with pytest.raises(UsageError) as error:
        load_recipe(path)
    message = str(error.value)
    assert "trainer.batch_sise" in message and "trainer.batch_size" in message
    assert f"{path}, line 5" in message


def test_wrong_type_names_key_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[trainer]\nmax_epochs = 'ten'\n")
    with pytest.raises(UsageError, match=r"trainer.max_epochs must be an integer.*line 2"):
        load_recipe(path)


def test_out_of_range_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match=r"trainer.batch_size must be at least 1; got 0 \(from the command line\)"
    ):
        load_recipe(RECIPES / "sparse_mlp.toml", ["trainer.batch_size=0"])


def test_nan_is_refused_where_a_bounded_number_is_expected() -> None:
    with pytest.raises(UsageError, match=r"optimizer.lr must be a number, not nan \(from the command line\)"):
        load_recipe(RECIPES / "sparse_mlp.toml", ["optimizer.lr=nan"])


def test_bad_choice_lists_the_choices() -> None:
    with pytest.raises(UsageError, match="data.kind must be one of sequence, centered"):
        resolve({}, ["data.kind=sideways"])


def test_unknown_model_type() -> None:
    with pytest.raises(UsageError, match="model.type must be one of"):
        resolve({}, ["model.type=perceptron"])


def test_list_items_are_checked() -> None:
    with pytest.raises(UsageError, match="data.books items"):
        resolve({}, ["data.books=[1.5]"])


def test_booleans_are_not_integers() -> None:
    with pytest.raises(UsageError, match="trainer.seed must be an integer"):
        resolve({}, ["trainer.seed=true"])


def test_table_given_as_value_and_value_as_table() -> None:
    with pytest.raises(UsageError, match="model.hidden must be a table"):
        resolve({}, ["model.hidden=3"])
    with pytest.raises(UsageError, match="trainer.seed is a value, not a table"):
        resolve({}, ["trainer.seed.x=3"])


def test_centered_context_must_be_odd() -> None:
    with pytest.raises(UsageError, match="data.context must be odd"):
        resolve({}, ["data.kind=centered", "data.context=10"])


def test_malformed_toml_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"is not valid TOML.*line 2"):
        load_recipe(write(tmp_path, "[data]\ncontext = = 3\n"))


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")


def test_round_trip_through_toml_and_plain_values(tmp_path: Path) -> None:
    recipe = load_recipe(RECIPES / "sparse_mlp.toml", ["optimizer.lr=3e-4"])
    again = load_recipe(write(tmp_path, recipe.to_toml(), "sparse_mlp.toml"))
    assert again.values == recipe.values
    assert recipe_from_values(recipe.values, "x").values == recipe.values


def test_cli_recipe_show_prints_resolved_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["recipe", "show", str(RECIPES / "sparse_mlp.toml"), "model.hidden.width=77"]) == 0
    out = capsys.readouterr().out
    assert "width = 77" in out and "max_steps = -1" in out


def test_cli_recipe_check_default_and_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(RECIPES.parent)
    assert run(["recipe", "check"]) == 0
    assert "sparse_mlp.toml" in capsys.readouterr().out
    bad = write(tmp_path, "[model]\nwidht = 3\n")
    assert run(["recipe", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'model.widht'" in err and len(err.strip().splitlines()) == 1


def test_cli_recipe_options_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["recipe", "options"]) == 0
    out = capsys.readouterr().out
    assert "trainer.batch_size" in out and "model.input.segments" in out


def test_error_lines_keep_square_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["recipe", "show", str(RECIPES / "sparse_mlp.toml"), "trainer.seed=[1, 2]"]) == 2
    assert "not [1, 2]" in capsys.readouterr().err
