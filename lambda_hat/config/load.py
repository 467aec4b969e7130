"""The one config loader: a tuning YAML (``parsl-optuna``), a run YAML (``lambda-hat run``), or
either of them (every subcommand that only needs problems, reference settings and paths).

A file is read once (:func:`lambda_hat.schema.read_yaml`), CLI overrides deep-merge into
it, its keys are checked against the schema (:mod:`lambda_hat.config.tuning` or
:mod:`lambda_hat.config.runs`), then the checks across fields, then every problem's presets
are composed (:func:`lambda_hat.problem.spec.resolve_problem`, a ``conf/`` next to the file
first) — all before any work. Every error is a :class:`ConfigError` naming the file and the
YAML path.

Which kind a file is (:func:`load_config`) is read from its keys: ``optuna`` or a ``methods``
list make a tuning YAML; ``seeds``, ``budget_sec``, ``allow_failed_reference``, ``isolate``,
``timeout_grace``, ``infrastructure_retries`` or a ``methods`` mapping (method -> sets) make a
run YAML; a file of only ``problems``, ``reference`` and ``paths`` fits both and loads as a
tuning YAML (the two read those sections alike).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from omegaconf import OmegaConf

from lambda_hat import layout
from lambda_hat.config.classes import ClassMembers, expand_members
from lambda_hat.config.paths import PathsConfig
from lambda_hat.config.runs import Runs, RunsConfig, check_runs
from lambda_hat.config.tuning import Tuning, TuningConfig, check_tuning
from lambda_hat.problem.build import problem_id, theory_unknown
from lambda_hat.problem.spec import (
    ProblemSpec,
    reference_of,
    resolve_entries,
    resolve_problem,
)
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.schema import ConfigError, read_yaml, validate

__all__ = [
    "ConfigFile",
    "config_kind",
    "load_config",
    "load_runs",
    "load_tuning",
    "reference_kinds",
]

C = TypeVar("C")

#: Keys of one YAML kind that the other lacks (``methods`` is in both, a list or a mapping).
TUNING_KEYS = tuple(
    k for k in TuningConfig.__pydantic_fields__ if k not in RunsConfig.__pydantic_fields__
)
RUNS_KEYS = tuple(
    k for k in RunsConfig.__pydantic_fields__ if k not in TuningConfig.__pydantic_fields__
)
#: Each kind: what it is called and the command that takes it, for messages.
_KINDS = {
    "tuning": ("a tuning YAML", "parsl-optuna --config FILE"),
    "runs": ("a run YAML", "lambda-hat run --config FILE"),
}


def _read(path: Path, overrides: dict | None) -> dict:
    """The file's mapping (empty for an empty file) with ``overrides`` merged in."""
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "the file must be a mapping with a 'problems:' list.")
    if overrides:
        raw = OmegaConf.to_container(OmegaConf.merge(raw, overrides), resolve=True)
    return raw


def _load(
    path: Path, raw: dict, schema: type[C], check: Callable[[C], C]
) -> tuple[C, list, dict[str, str]]:
    """``raw`` validated against ``schema``, checked, its problems resolved and their reference
    kinds checked (:func:`reference_kinds`); errors name the file."""
    try:
        cfg = check(validate(raw, schema, ""))
        search = [path.parent / "conf"]
        pairs = [
            pair
            for i, p in enumerate(cfg.problems)
            for pair in resolve_entries(p, f"problems[{i}]", search, path.parent)
        ]
        # one entry per problem (a source's checkpoints each get their own, with its step)
        cfg = dataclasses.replace(cfg, problems=[e for e, _ in pairs])
        problems = [s for _, s in pairs]
        kinds = reference_kinds(cfg.problems, problems)
    except ConfigError as exc:
        fix = _other_kind(exc, raw, "tuning" if schema is TuningConfig else "runs") or exc.fix
        raise ConfigError(exc.where, exc.problem, fix, source=str(path)) from None
    return cfg, problems, kinds


def reference_kinds(
    entries: list,
    specs: list[ProblemSpec],
    wheres: list[str] | None = None,
    kinds: dict[str, str] | None = None,
) -> dict[str, str]:
    """pid -> its ``reference`` kind (hmc | theory | none), added to ``kinds``. A ConfigError
    at ``wheres[i]`` (default ``problems[i]``) for ``theory`` where no theoretical λ is known
    (:func:`lambda_hat.problem.build.theory_unknown`), and for one pid listed twice with
    different kinds."""
    kinds = {} if kinds is None else kinds
    for i, (entry, spec) in enumerate(zip(entries, specs, strict=True)):
        at = wheres[i] if wheres is not None else f"problems[{i}]"
        where, pid, kind = f"{at}.reference", problem_id(spec), reference_of(entry, spec)
        if kind == "theory" and (why := theory_unknown(spec)) is not None:
            raise ConfigError(
                where,
                f"got 'theory', but {why}.",
                "use reference: hmc (an HMC reference) or reference: none (runs unscored).",
            )
        if kinds.setdefault(pid, kind) != kind:
            raise ConfigError(
                where,
                f"problem {pid} is listed twice, with reference: {kinds[pid]} and "
                f"reference: {kind}.",
                "give every listing of the same problem the same reference kind.",
            )
    return kinds


def _evidence(raw: dict) -> dict[str, dict[str, str]]:
    """The top-level keys of ``raw`` that only one kind has, by kind: key -> how it reads."""
    out: dict[str, dict[str, str]] = {
        "tuning": {k: k for k in TUNING_KEYS if k in raw},
        "runs": {k: k for k in RUNS_KEYS if k in raw},
    }
    methods = raw.get("methods")
    if isinstance(methods, list):
        out["tuning"]["methods"] = "methods (a list)"
    elif isinstance(methods, dict):
        out["runs"]["methods"] = "methods (a mapping of sets)"
    return out


def _other_kind(exc: ConfigError, raw: dict, kind: str) -> str | None:
    """A fix for an error at a top-level key that marks the file as the other kind."""
    other = "runs" if kind == "tuning" else "tuning"
    key = exc.where.split(".")[0].split("[")[0]
    if key not in _evidence(raw)[other]:
        return None
    return (
        f"{key} is written as in {_KINDS[other][0]}, not {_KINDS[kind][0]}: run that file "
        f"with `{_KINDS[other][1]}`, or write it as {_KINDS[kind][0]}."
    )


def load_tuning(path: str | Path, overrides: dict | None = None) -> Tuning:
    """Read, compose and validate a tuning YAML; raises :class:`ConfigError`.

    ``overrides`` (for CLI flags) deep-merge into the file's contents before validation.
    Presets are looked up in ``<config dir>/conf/<group>/`` first, then in the package.
    """
    path = Path(path)
    cfg, problems, kinds = _load(path, _read(path, overrides), TuningConfig, check_tuning)
    classes = _classes(cfg, path, kinds)
    return Tuning(config=cfg, problems=problems, source=str(path), classes=classes, kinds=kinds)


def _classes(cfg: TuningConfig, path: Path, kinds: dict[str, str]) -> dict[str, ClassMembers]:
    """Every class with its members resolved (sweeps expanded), their reference kinds added to
    ``kinds``; errors name the file."""
    out = {}
    search = [path.parent / "conf"]
    try:
        for i, c in enumerate(cfg.classes):
            roles = {}
            for role in ("train", "holdout"):
                entries = expand_members(getattr(c, role), f"classes[{i}].{role}")
                specs = [resolve_problem(e, w, search, path.parent) for w, e in entries]
                _member_kinds(entries, specs, kinds, train=role == "train")
                roles[role] = (specs, [e for _, e in entries])
            out[c.name] = ClassMembers(
                c, roles["train"][0], roles["holdout"][0], roles["train"][1], roles["holdout"][1]
            )
    except ConfigError as exc:
        raise ConfigError(exc.where, exc.problem, exc.fix, source=str(path)) from None
    return out


def _member_kinds(entries: list, specs: list, kinds: dict[str, str], train: bool) -> None:
    """Check the members' reference kinds (train members need a reference to tune against)
    and add them to ``kinds``."""
    for (where, entry), spec in zip(entries, specs, strict=True):
        if train and reference_of(entry, spec) == "none":
            raise ConfigError(
                f"{where}.reference",
                "a train member needs a reference: the class study scores its runs against it.",
                "use reference: hmc or theory, or make it a holdout member.",
            )
        reference_kinds([entry], [spec], [where], kinds)


def load_runs(path: str | Path, overrides: dict | None = None) -> Runs:
    """Read, compose and check a run YAML; raises :class:`ConfigError` naming the field.
    Fixed hyperparameters are validated against their method's schema here."""
    path = Path(path)
    cfg, problems, kinds = _load(path, _read(path, overrides), RunsConfig, check_runs)
    return Runs(config=cfg, problems=problems, source=str(path), kinds=kinds)


# ------------------------------------------------------------------------------ either kind


@dataclass(frozen=True)
class ConfigFile:
    """What every subcommand that needs problems and their references takes from a config
    file of either kind (:func:`load_config`).

    ``storage`` is where the file's Optuna studies are: a tuning YAML's ``optuna.storage``, a
    run YAML's ``from_study`` storage (when its sets name one), else the journal under the
    results. ``budget_sec`` is one trial's budget (``optuna.method_budget_sec`` or
    ``budget_sec``). ``loaded`` is the whole :class:`Tuning` or :class:`Runs`.
    """

    kind: Literal["tuning", "runs"]
    source: str
    problems: list[ProblemSpec]
    reference: ReferenceConfig
    paths: PathsConfig
    methods: tuple[str, ...]
    budget_sec: float
    storage: str
    loaded: Tuning | Runs

    @property
    def kinds(self) -> dict[str, str]:
        """pid -> its reference kind (hmc | theory | none)."""
        return self.loaded.kinds

    @property
    def tuning(self) -> TuningConfig | None:
        """The tuning config (None for a run YAML)."""
        return self.loaded.config if isinstance(self.loaded, Tuning) else None


def config_kind(raw: dict, source: str) -> Literal["tuning", "runs"]:
    """Which schema ``raw`` (a config file's mapping) is written in (the module docstring's
    rule); a :class:`ConfigError` naming the keys when it mixes both."""
    evidence = _evidence(raw)
    tuning, runs = list(evidence["tuning"].values()), list(evidence["runs"].values())
    if tuning and runs:
        raise ConfigError(
            next(iter(evidence["runs"])),
            f"this file mixes the two config kinds: {', '.join(runs)} belong to a run YAML "
            f"(lambda-hat run), {', '.join(tuning)} to a tuning YAML (parsl-optuna).",
            "keep the tuning settings and the run settings in two files.",
            source=source,
        )
    return "runs" if runs else "tuning"


def load_config(path: str | Path, overrides: dict | None = None) -> ConfigFile:
    """A config file of either kind (:func:`config_kind`), loaded by its own loader, as the
    problems, reference settings, paths and study storage every subcommand needs."""
    path = Path(path)
    raw = _read(path, overrides)
    if config_kind(raw, str(path)) == "runs":
        cfg, problems, kinds = _load(path, raw, RunsConfig, check_runs)
        runs = Runs(config=cfg, problems=problems, source=str(path), kinds=kinds)
        stores = [_study_storage(s.from_study) for sets in cfg.methods.values() for s in sets]
        storage = next((s for s in stores if s is not None), None)
        return ConfigFile(
            "runs",
            str(path),
            problems,
            cfg.reference,
            cfg.paths,
            tuple(cfg.methods),
            cfg.budget_sec,
            storage or str(layout.journal_path(cfg.paths.results)),
            runs,
        )
    cfg, problems, kinds = _load(path, raw, TuningConfig, check_tuning)
    oc = cfg.optuna
    return ConfigFile(
        "tuning",
        str(path),
        problems,
        cfg.reference,
        cfg.paths,
        tuple(cfg.methods),
        oc.method_budget_sec,
        oc.storage or str(layout.journal_path(cfg.paths.results)),
        Tuning(cfg, problems, str(path), _classes(cfg, path, kinds), kinds),
    )


def _study_storage(from_study: Any) -> str | None:
    """The study storage a ``from_study`` set reads (None: a set of fixed values)."""
    if from_study is None or from_study.class_ is not None:
        return None
    return from_study.storage or str(layout.journal_path(from_study.results))
