"""Hyper-parameter sweeps: nevergrad proposes recipe overrides, each trial is an ordinary training run.

A sweep lives in `home()/sweeps/<name>/`:

    sweep.json   the base recipe, the parameter specs, the optimizer, the budget and every trial so far
                 (its values, run name, status, held-out bits/char), rewritten atomically after each change
    best.toml    the resolved recipe of the best finished trial, rewritten whenever the best improves

Trials are scored by the run's best held-out bits per character. An interrupted sweep resumes from its
sweep.json: finished trials are told to a fresh optimizer (nevergrad optimizers accept points they did not
ask for), the trial that was cut short is resumed from its run's `last.ckpt`, and new trials are asked for
until the budget is spent. nevergrad is an optional extra, imported only when a sweep runs.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import math
import multiprocessing
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import filelock
import tomli_w

from langinterp import schema
from langinterp.errors import LanginterpError, NetworkError, NotFoundError, UsageError, first_line
from langinterp.paths import atomic_write, file_lock, home
from langinterp.recipe import Recipe, parse_value, resolve
from langinterp.runs import RunDir, find_run, timestamped_name

SWEEP_FORMAT = "langinterp-sweep/1"
SWEEP_FILE = "sweep.json"
BEST_FILE = "best.toml"
KINDS = ("log", "float", "int", "choice")
# What a failed trial costs the optimizer: far above the 7 bits/char of guessing uniformly among 128
# symbols, so the search steers away from it without the huge values that upset some optimizers' scaling.
FAILED_LOSS = 100.0
INSTALL_HINT = (
    "langinterp sweep needs nevergrad, an optional dependency: pip install nevergrad "
    "(or install langinterp with its sweep extra)"
)


class SweepInterrupted(LanginterpError):
    """Ctrl-C stopped the sweep; sweep.json records where, and `--resume` continues from there."""

    exit_code = 130


def sweeps_dir() -> Path:
    return home() / "sweeps"


def import_nevergrad() -> Any:
    """nevergrad, or a one-line error that says how to install it (it is an optional, heavy extra)."""
    try:
        import nevergrad
    except ImportError:
        raise LanginterpError(INSTALL_HINT) from None
    return nevergrad


@dataclass(frozen=True)
class Param:
    """One searched recipe key: `log`/`float` (real range), `int` (integer range) or `choice` (values)."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def spec(self) -> str:
        """The `KEY=KIND:...` text this parameter was parsed from (stored in sweep.json)."""
        if self.kind == "choice":
            return f"{self.key}=choice:{','.join(_literal(value) for value in self.choices)}"
        return f"{self.key}={self.kind}:{self.low!r}:{self.high!r}"

    def nevergrad(self, ng: Any) -> Any:
        if self.kind == "log":
            return ng.p.Log(lower=self.low, upper=self.high)
        if self.kind == "float":
            return ng.p.Scalar(lower=self.low, upper=self.high)
        if self.kind == "int":
            return ng.p.Scalar(lower=self.low, upper=self.high).set_integer_casting()
        return ng.p.Choice(list(self.choices))

    def plain(self, value: Any) -> Any:
        """A value nevergrad proposed as plain JSON/TOML data (Python int or float, not numpy)."""
        if self.kind == "int":
            return int(value)
        if self.kind in ("log", "float"):
            return float(value)
        return value


def _literal(value: Any) -> str:
    """A value as the TOML literal `key=value` overrides parse back to the same value."""
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def _suggestions(key: str, choices: Sequence[Any], known: Mapping[str, schema.Option]) -> list[str]:
    """Keys the user may have meant: for a choice spec, every key whose allowed values hold all the choices
    (`model.layer_type=choice:continuous,discontinuous` -> the three layer keys); else the closest names."""
    if choices and all(isinstance(value, str) for value in choices):
        fitting = [
            name
            for name, option in known.items()
            if option.choices is not None and set(choices) <= set(option.choices)
        ]
        if fitting:
            return fitting
    return difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _check_value(recipe: Recipe, key: str, value: Any) -> None:
    """Let the recipe's own validation judge `key = value` in this recipe (types, ranges, choices)."""
    tree = copy.deepcopy(recipe.values)
    node = tree
    for part in key.split(".")[:-1]:
        node = node[part]
    node[key.rsplit(".", 1)[-1]] = value
    resolve(tree, name=recipe.name)


def parse_param(text: str, recipe: Recipe) -> Param:
    """Parse `KEY=log:LOW:HIGH`, `KEY=float:LOW:HIGH`, `KEY=int:LOW:HIGH` or `KEY=choice:A,B,...` and check
    it against the recipe's schema, so a typo costs one line now rather than a wasted budget later."""
    key, sep, body = text.partition("=")
    key = key.strip()
    kind, _, rest = body.partition(":")
    kind = kind.strip()
    where = f"--param {text}"
    if not sep or not key or kind not in KINDS:
        raise UsageError(
            f"{where}: expected KEY=log:LOW:HIGH, KEY=float:LOW:HIGH, KEY=int:LOW:HIGH or KEY=choice:A,B,..."
        )
    known = schema.flatten(schema.recipe_table(recipe.model["type"]))
    if kind == "choice":
        choices = tuple(parse_value(part.strip()) for part in rest.split(",") if part.strip())
        if not choices:
            raise UsageError(f"{where}: give at least one value after choice:")
        if len({_literal(value) for value in choices}) != len(choices):
            raise UsageError(f"{where}: a value is listed twice")
        param = Param(key, kind, choices=choices)
    else:
        parts = rest.split(":")
        if len(parts) != 2:
            raise UsageError(f"{where}: write the range as {kind}:LOW:HIGH")
        low, high = (parse_value(part.strip()) for part in parts)
        numbers = (int,) if kind == "int" else (int, float)
        if any(isinstance(v, bool) or not isinstance(v, numbers) for v in (low, high)):
            what = "integers" if kind == "int" else "numbers"
            raise UsageError(f"{where}: LOW and HIGH must be {what}")
        if kind != "int":
            low, high = float(low), float(high)
        if not low < high:
            raise UsageError(f"{where}: LOW must be below HIGH")
        if kind == "log" and low <= 0:
            raise UsageError(f"{where}: a log range must be above 0")
        param = Param(key, kind, low, high)
    if key not in known:
        close = _suggestions(key, param.choices, known)
        hint = f"did you mean {_one_of(close)}? " if close else ""
        raise UsageError(
            f"{where}: unknown key {key!r} for model.type {recipe.model['type']}; {hint}"
            f"`langinterp recipe options --type {recipe.model['type']}` lists them"
        )
    for value in param.choices or (param.low, param.high):
        try:
            _check_value(recipe, key, value)
        except UsageError as error:
            raise UsageError(f"{where}: {error}") from None
    return param


@dataclass
class Trial:
    """One training run of the sweep. status: running, finished, failed or interrupted."""

    number: int
    values: dict[str, Any]
    run: str
    status: str = "running"
    score: float | None = None
    error: str | None = None

    def overrides(self) -> list[str]:
        return [f"{key}={_literal(value)}" for key, value in self.values.items()]


@dataclass
class Sweep:
    """A sweep's settings and trials, as stored in its sweep.json."""

    name: str
    recipe: dict[str, Any]
    recipe_name: str
    params: list[str]
    optimizer: str
    budget: int
    seed: int = 0
    trials: list[Trial] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return sweeps_dir() / self.name

    @property
    def best_path(self) -> Path:
        return self.path / BEST_FILE

    def base_recipe(self) -> Recipe:
        return resolve(self.recipe, name=self.recipe_name)

    def parsed_params(self) -> list[Param]:
        base = self.base_recipe()
        return [parse_param(text, base) for text in self.params]

    def best(self) -> Trial | None:
        scored = [trial for trial in self.trials if trial.score is not None]
        return min(scored, key=lambda trial: trial.score) if scored else None

    def done(self) -> int:
        return sum(trial.status in ("finished", "failed") for trial in self.trials)

    def save(self) -> None:
        payload = {"format": SWEEP_FORMAT, **asdict(self)}
        atomic_write(self.path / SWEEP_FILE, json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, name: str) -> Sweep:
        path = sweeps_dir() / name / SWEEP_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFoundError(f"no sweep {name!r} in {sweeps_dir()}") from None
        except (OSError, ValueError) as error:
            raise UsageError(f"{path} is not readable: {error}") from None
        if not isinstance(raw, dict) or raw.pop("format", None) != SWEEP_FORMAT:
            raise UsageError(f"{path} is not a {SWEEP_FORMAT} file")
        try:
            trials = [Trial(**trial) for trial in raw.pop("trials", [])]
            return cls(**raw, trials=trials)
        except TypeError as error:  # a key missing, unknown or of the wrong shape (a hand edit)
            raise UsageError(f"{path} is not a readable {SWEEP_FORMAT} file: {error}") from None


def start_sweep(
    recipe: Recipe,
    params: Sequence[str],
    *,
    budget: int,
    optimizer: str = "OnePlusOne",
    name: str | None = None,
    seed: int = 0,
) -> Sweep:
    """A new sweep of `recipe` over `params` (spec texts), checked and saved; or, when a sweep of that name
    exists with the same recipe, parameters and optimizer, that sweep with the new budget (so re-running
    the same command continues it)."""
    if budget < 1:
        raise UsageError("--budget must be at least 1")
    if not params:
        raise UsageError("give at least one --param KEY=KIND:... to search over")
    from langinterp.models import registered_types  # torch: imported only when a sweep starts

    if recipe.model["type"] not in registered_types():
        raise UsageError(f"sweeps train neural models only: {recipe.model['type']} recipes cannot be swept")
    parsed = [parse_param(text, recipe) for text in params]
    keys = [param.key for param in parsed]
    if repeated := sorted({key for key in keys if keys.count(key) > 1}):
        raise UsageError(f"--param {repeated[0]} is given twice")
    _check_optimizer(optimizer)
    name = name or timestamped_name(recipe.name)
    if "/" in name or name in {"", ".", ".."}:
        raise UsageError(f"sweep name {name!r} must be a plain directory name")
    sweep = Sweep(name, recipe.values, recipe.name, [p.spec for p in parsed], optimizer, budget, seed)
    if (sweep.path / SWEEP_FILE).exists():
        stored = Sweep.load(name)
        same = (stored.recipe, stored.params, stored.optimizer, stored.seed) == (
            sweep.recipe,
            sweep.params,
            sweep.optimizer,
            sweep.seed,
        )
        if not same:
            raise UsageError(
                f"sweep {name!r} exists with another recipe, parameters or optimizer; "
                f"pick another --name or continue it with --resume {name}"
            )
        stored.budget = budget
        sweep = stored
    sweep.save()
    return sweep


def resume_sweep(name: str, budget: int | None = None) -> Sweep:
    """The stored sweep `name`, its budget raised (or lowered) when given."""
    sweep = Sweep.load(name)
    if budget is not None:
        if budget < 1:
            raise UsageError("--budget must be at least 1")
        sweep.budget = budget
        sweep.save()
    return sweep


def _check_optimizer(name: str) -> None:
    registry = import_nevergrad().optimizers.registry
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"--optimizer {name!r} is not a nevergrad optimizer{hint}; try OnePlusOne or NGOpt")


@dataclass(frozen=True)
class Outcome:
    """What a trial's training produced: a score, or the one-line reason it failed."""

    status: str
    score: float | None = None
    error: str | None = None


def run_trial(
    recipe_values: dict[str, Any],
    recipe_name: str,
    overrides: list[str],
    run_name: str,
    mirror: str | None,
) -> Outcome:
    """Train one trial (resuming its run when one was cut short) and score it by held-out bits/char.

    Top-level and plain-data in, plain-data out, so worker processes can run it. Errors that would fail
    every trial alike (missing book, no network, a foreign run in the way) propagate and stop the sweep;
    others (an impossible combination of values, a diverging loss) fail this trial only.
    """
    from langinterp.training import TrainingInterrupted, train

    try:
        recipe = resolve(recipe_values, overrides, name=recipe_name)
    except UsageError as error:
        return Outcome("failed", error=str(error))
    run = _existing_run(run_name, recipe)
    try:
        if run is None:
            run = train(recipe, run_name=run_name, mirror=mirror, quiet=True)
        elif run.info().status != "finished":
            run = train(None, resume=run_name, mirror=mirror, quiet=True)
    except TrainingInterrupted:
        return Outcome("interrupted")
    except (NotFoundError, NetworkError):
        raise
    except Exception as error:
        return Outcome("failed", error=first_line(error))
    score = run.info().best_valid_bpc
    if score is None or not math.isfinite(score):
        return Outcome("failed", error="no finite held-out bits/char (diverged, or no validation ran)")
    return Outcome("finished", score=score)


def _existing_run(run_name: str, recipe: Recipe) -> RunDir | None:
    """The run an earlier, cut-short attempt at this trial left: finished (the sweep stopped before it
    heard) or resumable from `last.ckpt`. A run that never saved a checkpoint holds nothing; it is removed
    and the trial starts again under the same name."""
    try:
        run = find_run(run_name)
    except NotFoundError:
        return None
    if run.recipe().values != recipe.values:
        raise UsageError(
            f"run {run_name!r} exists but was trained with another recipe; remove it or pick another --name"
        )
    if run.info().status == "finished" or run.checkpoint("last").is_file():
        return run
    shutil.rmtree(run.path)
    return None


@contextlib.contextmanager
def _sweep_lock(sweep: Sweep) -> Iterator[None]:
    """One process at a time runs a sweep: two would ask for the same trial numbers and runs."""
    try:
        with file_lock(sweep.path / SWEEP_FILE, timeout=0):
            yield
    except filelock.Timeout:
        raise UsageError(f"sweep {sweep.name} is running in another process") from None


Progress = Callable[[Sweep, Trial], None]


class _Search:
    """The nevergrad optimizer of a sweep, brought to where the sweep stands.

    The stored trials are replayed in order: ask, then tell the trial's score. With the same seed a
    deterministic optimizer proposes the same values again, so a resumed sweep continues exactly as an
    uninterrupted one would; where it proposes something else (a trial that ran under other settings), the
    stored values are told instead, as a point the optimizer did not ask for.
    """

    def __init__(self, sweep: Sweep, workers: int) -> None:
        import numpy as np

        ng = import_nevergrad()
        self.params = sweep.parsed_params()
        parametrization = ng.p.Dict(**{param.key: param.nevergrad(ng) for param in self.params})
        parametrization.random_state = np.random.RandomState(sweep.seed)
        self.parametrization = parametrization
        self.optimizer = ng.optimizers.registry[sweep.optimizer](
            parametrization=parametrization, budget=sweep.budget, num_workers=workers
        )
        self.tell_not_asked = ng.errors.TellNotAskedNotSupportedError
        self.unfinished: list[tuple[Trial, Any]] = []
        for trial in sweep.trials:
            candidate, values = self.ask()
            if values != trial.values:
                candidate = self.parametrization.spawn_child(new_value=trial.values)
            if trial.status in ("finished", "failed"):
                self.tell(candidate, trial)
            else:
                self.unfinished.append((trial, candidate))

    def ask(self) -> tuple[Any, dict[str, Any]]:
        candidate = self.optimizer.ask()
        values = {param.key: param.plain(candidate.value[param.key]) for param in self.params}
        return candidate, values

    def tell(self, candidate: Any, trial: Trial) -> None:
        loss = trial.score if trial.score is not None else FAILED_LOSS
        # Some optimizers learn only from their own asks; the trial stays in sweep.json all the same.
        with contextlib.suppress(self.tell_not_asked):
            self.optimizer.tell(candidate, loss)


def _record(sweep: Sweep, trial: Trial, outcome: Outcome) -> None:
    """Store a trial's outcome, and the best recipe when it improved."""
    trial.status, trial.score, trial.error = outcome.status, outcome.score, outcome.error
    if outcome.score is not None and sweep.best() is trial:
        best = find_run(trial.run).recipe()
        header = f"# best of sweep {sweep.name}: trial {trial.number}, {trial.score:.4f} bits/char\n"
        atomic_write(sweep.best_path, header + best.to_toml())
    sweep.save()


def run_sweep(
    sweep: Sweep,
    *,
    workers: int = 1,
    mirror: str | None = None,
    progress: Progress | None = None,
) -> Sweep:
    """Run trials until `sweep.budget` have finished or failed, `workers` at a time.

    `progress(sweep, trial)` is called when a trial starts and when it ends. Ctrl-C (or a progress callback
    raising KeyboardInterrupt) saves the sweep with its unfinished trials marked interrupted and raises
    `SweepInterrupted`; running the sweep again continues them.
    """
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    with _sweep_lock(sweep):
        search = _Search(sweep, workers)
        queue = search.unfinished
        report = progress or (lambda _sweep, _trial: None)

        def next_trial() -> tuple[Trial, Any] | None:
            if queue:
                return queue.pop(0)
            if len(sweep.trials) >= sweep.budget:
                return None
            candidate, values = search.ask()
            number = len(sweep.trials) + 1
            trial = Trial(number, values, f"{sweep.name}-{number:03d}")
            sweep.trials.append(trial)
            return trial, candidate

        def arguments(trial: Trial) -> tuple[Any, ...]:
            return sweep.recipe, sweep.recipe_name, trial.overrides(), trial.run, mirror

        running: list[Trial] = []
        try:
            if workers == 1:
                while (item := next_trial()) is not None:
                    trial, candidate = item
                    running = [trial]
                    _started(sweep, trial, report)
                    outcome = run_trial(*arguments(trial))
                    if outcome.status == "interrupted":
                        raise KeyboardInterrupt
                    _finished(sweep, search, trial, candidate, outcome, report)
                    running = []
            else:
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                    futures: dict[Future[Outcome], tuple[Trial, Any]] = {}
                    interrupted = False
                    while True:
                        while not interrupted and len(futures) < workers and (item := next_trial()):
                            trial, candidate = item
                            running.append(trial)
                            _started(sweep, trial, report)
                            futures[pool.submit(run_trial, *arguments(trial))] = item
                        if not futures:
                            break
                        done, _ = wait(futures, return_when=FIRST_COMPLETED)
                        for future in done:
                            trial, candidate = futures.pop(future)
                            outcome = future.result()
                            if outcome.status == "interrupted":
                                interrupted = True
                                continue
                            running.remove(trial)
                            _finished(sweep, search, trial, candidate, outcome, report)
                    if interrupted:
                        raise KeyboardInterrupt
        except BaseException as error:
            for trial in running:
                if trial.status == "running":
                    trial.status = "interrupted"
            sweep.save()
            if not isinstance(error, KeyboardInterrupt):
                raise
            raise SweepInterrupted(
                f"sweep {sweep.name} interrupted after {sweep.done()} of {sweep.budget} trials; "
                f"continue with `langinterp sweep --resume {sweep.name}`"
            ) from None
    return sweep


def _started(sweep: Sweep, trial: Trial, report: Progress) -> None:
    trial.status, trial.score, trial.error = "running", None, None
    sweep.save()
    report(sweep, trial)


def _finished(
    sweep: Sweep, search: _Search, trial: Trial, candidate: Any, outcome: Outcome, report: Progress
) -> None:
    _record(sweep, trial, outcome)
    search.tell(candidate, trial)
    report(sweep, trial)
