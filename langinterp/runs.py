"""Run directories: where a training run keeps its recipe, checkpoints, metrics and samples.

Layout of `runs_dir()/<name>/`:

    recipe.toml             the resolved recipe (every default filled in)
    run.json                facts about the run (see `RunInfo`), rewritten atomically as it progresses
    checkpoints/best.ckpt   lowest validation loss so far     (neural models)
    checkpoints/last.ckpt   end of the latest epoch, resumable (neural models)
    model.txt               the booster in LightGBM's text format (gbm runs)
    metrics.csv             one row per logged step / epoch
    samples.txt             sample generations written during training

A checkpoint carries the resolved recipe as plain data under `hyper_parameters`, so generation needs the
file alone, and loads with `torch.load(weights_only=True)`: no code from a file is ever run.
"""

from __future__ import annotations

import json
import pickle
import shutil
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

from langinterp.errors import NotFoundError, UsageError, first_line
from langinterp.paths import atomic_write, runs_dir
from langinterp.recipe import Recipe, load_recipe, recipe_from_values

CHECKPOINT_FORMAT = "langinterp/1"
INFO_FILE = "run.json"
RECIPE_FILE = "recipe.toml"
BOOSTER_FILE = "model.txt"
CHECKPOINTS = ("best", "last")


@dataclass
class RunInfo:
    """What `langinterp runs` shows about a run without opening its checkpoints."""

    name: str
    recipe_name: str
    model_type: str
    data_kind: str
    created: str
    status: str = "running"
    parameters: int = 0
    epochs: int = 0
    steps: int = 0
    best_valid_bpc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _json_types(hint: Any) -> tuple[type, ...]:
    """The types a parsed JSON value may have for a field annotated `hint`: `float | None` takes a float,
    an int (JSON has one kind of number) or None; `dict[str, Any]` takes a dict."""
    kinds = tuple(
        get_origin(arg) or arg for arg in (get_args(hint) if get_origin(hint) is UnionType else [hint])
    )
    return (*kinds, int) if float in kinds else kinds


_FIELD_TYPES = {name: _json_types(hint) for name, hint in get_type_hints(RunInfo).items()}
_REQUIRED = [f.name for f in fields(RunInfo) if f.default is MISSING and f.default_factory is MISSING]


def _parse_info(raw: object) -> RunInfo:
    """A `RunInfo` from the parsed run.json, its shape and field types checked here: a hand-edited or
    half-written file is refused up front, as one reason, instead of failing later while a table of runs is
    sorted or rendered. Unknown keys are ignored, so a newer version may record more facts."""
    if not isinstance(raw, dict):
        raise ValueError(f"a JSON {type(raw).__name__}, not an object")
    if missing := [name for name in _REQUIRED if name not in raw]:
        raise ValueError(f"missing {', '.join(missing)}")
    if wrong := [
        name for name, kinds in _FIELD_TYPES.items() if name in raw and not isinstance(raw[name], kinds)
    ]:
        raise ValueError(f"wrong type for {', '.join(wrong)}")
    return RunInfo(**{name: raw[name] for name in _FIELD_TYPES if name in raw})


class BrokenRunError(NotFoundError):
    """A run directory whose run.json cannot be read or does not describe a run. `reason` says why without
    the path, so that a listing can skip the run and name its directory its own way."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is not a langinterp run directory ({reason})")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class RunDir:
    """A run directory on disk; cheap to construct, reads files only when asked."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def recipe_path(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.txt"

    @property
    def booster_path(self) -> Path:
        return self.path / BOOSTER_FILE

    def checkpoint(self, which: str) -> Path:
        return self.checkpoints / f"{which}.ckpt"

    def info(self) -> RunInfo:
        """The run's facts, read afresh each call (training rewrites them); `BrokenRunError` if unreadable."""
        try:
            return _parse_info(json.loads((self.path / INFO_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            raise BrokenRunError(self.path, f"{INFO_FILE}: {first_line(error)}") from None

    def write_info(self, info: RunInfo) -> None:
        atomic_write(self.path / INFO_FILE, json.dumps(asdict(info), indent=2) + "\n")

    def update_info(self, **changes: Any) -> RunInfo:
        info = self.info()
        for key, value in changes.items():
            setattr(info, key, value)
        self.write_info(info)
        return info

    def recipe(self) -> Recipe:
        """The resolved recipe the run was trained with, under the recipe's own name."""
        return Recipe(values=load_recipe(self.recipe_path).values, name=self.info().recipe_name)


STAMP = "%Y%m%d-%H%M%S"  # a run's start in its default name


def timestamped_name(recipe_name: str, now: datetime | None = None) -> str:
    return f"{recipe_name}-{(now or datetime.now()).strftime(STAMP)}"


def is_timestamped_name(name: str, recipe_name: str) -> bool:
    """Whether a run kept the name `timestamped_name` gives it: then its name says its recipe and start."""
    if not name.startswith(f"{recipe_name}-"):
        return False
    stamp = name.removeprefix(f"{recipe_name}-")
    try:
        # Written back and compared: strptime alone also takes fields that strftime pads, such as `5093`.
        return datetime.strptime(stamp, STAMP).strftime(STAMP) == stamp
    except ValueError:
        return False


def create_run(recipe: Recipe, name: str | None = None) -> RunDir:
    """Make a new run directory with the resolved recipe and a `running` info file."""
    name = name or timestamped_name(recipe.name)
    if "/" in name or name in {"", ".", ".."}:
        raise UsageError(f"run name {name!r} must be a plain directory name")
    path = runs_dir() / name
    if (path / INFO_FILE).exists():
        raise UsageError(
            f"run {name!r} already exists in {runs_dir()}; pick another --run-name or --resume it"
        )
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    run = RunDir(path)
    atomic_write(run.recipe_path, recipe.to_toml())
    run.write_info(
        RunInfo(
            name=name,
            recipe_name=recipe.name,
            model_type=recipe.model["type"],
            data_kind=recipe.data["kind"],
            # Microseconds: runs started within one second must still sort in the order they were made.
            created=datetime.now(UTC).isoformat(timespec="microseconds"),
        )
    )
    return run


@dataclass(frozen=True)
class RunListing:
    """The run directories in `runs_dir()`: each readable one with its info, oldest first, and each one
    skipped because its run.json is broken, so that one bad run neither hides the others nor goes unseen."""

    runs: list[tuple[RunDir, RunInfo]]
    skipped: list[BrokenRunError]


def scan_runs() -> RunListing:
    """Every run directory, its run.json read once; the library reports broken runs, the caller shows them.
    Hidden entries (a run being removed, `remove_run`) are not runs."""
    root = runs_dir()
    runs: list[tuple[RunDir, RunInfo]] = []
    skipped: list[BrokenRunError] = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith(".") or not (path / INFO_FILE).is_file():
            continue
        run = RunDir(path)
        try:
            runs.append((run, run.info()))
        except BrokenRunError as error:
            skipped.append(error)
    runs.sort(key=lambda pair: (_created_at(pair[1].created), pair[0].name))
    return RunListing(runs, skipped)


def _created_at(created: str) -> datetime:
    """When a run was made (older runs recorded whole seconds); an unreadable time sorts first."""
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def list_runs() -> list[RunDir]:
    """Every readable run directory, oldest first (`scan_runs` also says which were skipped, and why)."""
    return [run for run, _ in scan_runs().runs]


REMOVING = ".removing-"  # the prefix of a run directory on its way out


def remove_run(run: RunDir) -> None:
    """Delete a run directory. It is first renamed to a hidden name beside it (one atomic step), so no
    listing or lookup ever meets it half deleted; what interrupted removals left in the runs folder, the
    next removal deletes."""
    gone = run.path.with_name(f"{REMOVING}{run.name}-{uuid.uuid4().hex[:8]}")
    run.path.rename(gone)
    shutil.rmtree(gone)
    for leftover in runs_dir().glob(f"{REMOVING}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def find_run(spec: str | Path | None = None, *, data_kind: str | None = None) -> RunDir:
    """A run by name or path; without one the newest readable run (of `data_kind`, when given)."""
    if spec is None:
        runs = [run for run, info in scan_runs().runs if data_kind is None or info.data_kind == data_kind]
        if not runs:
            what = f"no {data_kind} run" if data_kind else "no run"
            raise NotFoundError(f"{what} in {runs_dir()}; train one with `langinterp train RECIPE`")
        return runs[-1]
    path = Path(spec)
    for candidate in (path, runs_dir() / str(spec)):
        if (candidate / INFO_FILE).is_file():
            return RunDir(candidate)
    raise NotFoundError(f"run {str(spec)!r} not found in {runs_dir()} (`langinterp runs` lists them)")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """The parts of a checkpoint that generation and evaluation need."""

    recipe: Recipe
    state_dict: dict[str, Any]  # parameter name -> tensor
    epoch: int
    global_step: int


def checkpoint_hyperparameters(recipe: Recipe) -> dict[str, Any]:
    """What the Lightning module saves as hyper-parameters: plain data, safe to load."""
    return {"format": CHECKPOINT_FORMAT, "recipe": recipe.values, "recipe_name": recipe.name}


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read a checkpoint safely (`weights_only=True`); a missing or foreign file is one clear error."""
    import torch  # here, not at module level: listing runs must not wait for torch to import

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise UsageError(f"{path} is not a readable langinterp checkpoint: {first_line(error)}") from None
    hyper = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    if (
        not isinstance(hyper, dict)
        or hyper.get("format") != CHECKPOINT_FORMAT
        or not isinstance(hyper.get("recipe"), dict)
        or not isinstance(payload.get("state_dict"), dict)
    ):
        raise UsageError(f"{path} is not a langinterp checkpoint (no {CHECKPOINT_FORMAT} recipe inside)")
    prefix = "model."
    state = {
        key[len(prefix) :]: value for key, value in payload["state_dict"].items() if key.startswith(prefix)
    }
    return LoadedCheckpoint(
        recipe=recipe_from_values(hyper["recipe"], hyper.get("recipe_name", "recipe")),
        state_dict=state,
        epoch=int(payload.get("epoch", 0)),
        global_step=int(payload.get("global_step", 0)),
    )
