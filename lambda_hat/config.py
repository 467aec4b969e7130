"""The one config loader and its typed schema.

An experiment YAML is read once, presets are composed with OmegaConf, and every value is
checked against the dataclasses below *before any work starts*. A :class:`ConfigError` names
the YAML path (``problems[0].overrides.model.depht``), the value it got, what is allowed and
how to fix it; an unknown key is never silently kept.

Field docs follow the Parsl habit: each field says its type, unit, default and what ``None``
means, in the ``help`` metadata next to it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf

PRESET_GROUPS = ("model", "data", "teacher")


class ConfigError(ValueError):
    """A config value is wrong. The message names the field, the value, and the fix."""

    def __init__(self, where: str, problem: str, fix: str = "", source: str | None = None):
        self.where, self.problem, self.fix, self.source = where, problem, fix, source
        head = f"{source}: " if source else ""
        super().__init__(f"{head}{where}: {problem}" + (f" Fix: {fix}" if fix else ""))


def _f(default: Any = dataclasses.MISSING, help: str = "", **checks: Any) -> Any:
    """A dataclass field with a help text and numeric checks (ge, gt, le, lt)."""
    meta = {"help": help, **checks}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- problem schema


@dataclass(frozen=True)
class TrainConfig:
    """How w* is obtained from the student's initialization (optax, compiled loop)."""

    optimizer: Literal["adam", "sgd"] = _f("adam", "optax optimizer")
    lr: float = _f(0.01, "learning rate", gt=0)
    schedule: Literal["cosine", "constant"] = _f(
        "cosine", "cosine decays lr to lr/100 so w* settles in a minimum; constant keeps it"
    )
    steps: int = _f(2000, "optimizer steps", ge=1)
    batch_size: int | None = _f(None, "minibatch size; None trains full-batch", ge=1)


@dataclass(frozen=True)
class ModelConfig:
    """Student architecture. Input/output sizes come from the data section."""

    family: Literal["mlp", "dln"] = _f("mlp", "mlp, or dln (deep linear network, no bias)")
    depth: int = _f(2, "number of hidden layers (ignored when widths is given)", ge=0)
    widths: list[int] | None = _f(None, "hidden widths; None derives them from target_params")
    target_params: int | None = _f(None, "parameter budget that fixes equal hidden widths", ge=1)
    activation: Literal["tanh", "relu", "gelu", "identity"] = _f("tanh", "hidden activation")
    bias: bool = _f(True, "bias terms (must be false for dln)")
    init_scale: float = _f(1.0, "weights ~ N(0, init_scale^2 / fan_in)", gt=0)
    train: TrainConfig = _f(TrainConfig(), "training of w*")


@dataclass(frozen=True)
class DataConfig:
    """Synthetic regression data y = teacher(x) + noise * N(0, 1)."""

    n: int = _f(1000, "number of training samples", ge=2)
    input_dim: int = _f(4, "input dimension H_0", ge=1)
    output_dim: int = _f(1, "output dimension H_L", ge=1)
    x_dist: Literal["gauss", "uniform"] = _f("gauss", "N(0, I) or U[-1, 1]^input_dim inputs")
    noise: float = _f(0.1, "Gaussian noise sigma; L_n is the Gaussian NLL at this sigma", gt=0)


@dataclass(frozen=True)
class TeacherConfig:
    """The network that generates the targets."""

    widths: list[int] | None = _f(None, "teacher hidden widths; None uses the student's")
    activation: Literal["tanh", "relu", "gelu", "identity"] | None = _f(
        None, "teacher activation; None uses the student's"
    )
    rank: int | None = _f(
        None, "rank of the teacher's first weight matrix; None keeps it full", ge=0
    )
    scale: float = _f(1.0, "teacher weights ~ N(0, scale^2 / fan_in)", ge=0)


@dataclass(frozen=True)
class ProblemSpec:
    """A fully resolved problem: presets composed, overrides merged, types checked."""

    model: ModelConfig
    data: DataConfig
    teacher: TeacherConfig
    seed: int


@dataclass(frozen=True)
class ProblemEntry:
    """A problem as written in the experiment YAML."""

    model: str = _f("small", "preset name in conf/model/")
    data: str = _f("base", "preset name in conf/data/")
    teacher: str = _f("_null", "preset name in conf/teacher/ (_null: random student-shaped net)")
    seed: int = _f(0, "seed for data, teacher, student init and training")
    overrides: dict = _f({}, "deep-merged into the presets: {model: {...}, data: {...}, ...}")


# -------------------------------------------------------------------------- experiment schema


@dataclass(frozen=True)
class ReferenceConfig:
    """The HMC (NUTS) reference and the posterior every method targets."""

    chains: int = _f(4, "independent chains, vmapped", ge=2)
    draws: int = _f(10000, "kept draws per chain after warm-up", ge=20)
    warmup: int = _f(1000, "window-adaptation steps per chain (discarded)", ge=20)
    target_accept: float = _f(0.8, "NUTS target acceptance", gt=0, lt=1)
    max_tree_depth: int = _f(10, "NUTS maximum tree depth", ge=1)
    beta: float | None = _f(None, "inverse temperature; None means 1/log(n)", gt=0)
    gamma: float = _f(1.0, "localization strength gamma", ge=0)
    budget_sec: float | None = _f(None, "wall-clock budget per reference (s); None: none", gt=0)
    chunk: int = _f(1000, "draws per chunk between budget checks / progress lines", ge=1)
    rhat_max: float = _f(1.01, "quality gate: largest acceptable rank-normalized R-hat", gt=1)
    ess_min: float = _f(400.0, "quality gate: smallest acceptable bulk ESS", ge=0)
    seed: int = _f(0, "sampling seed")
    workers: int | None = _f(None, "references computed at once; None: one per core", ge=1)


@dataclass(frozen=True)
class PathsConfig:
    """Where outputs go (relative paths are relative to the working directory)."""

    artifacts: str = _f("artifacts", "problems, references and runs")
    results: str = _f("results", "studies and Parquet tables")


@dataclass(frozen=True)
class OptunaConfig:
    """Tuning workflow settings (parsl-optuna).

    ``search_space`` and ``enqueue`` are keyed by method name and checked against the method's
    own search space (:func:`lambda_hat.methods.search_space`) by the workflow before any work.
    ``search_space.<method>.<param>`` is either a fixed value (the parameter is not tuned) or a
    mapping ``{low, high, log}`` (numbers) / ``{choices: [...]}`` (categorical) replacing the
    default range. ``enqueue.<method>`` is a list of hyperparameter mappings tried first
    (warm start), once per study.
    """

    max_trials: int = _f(100, "finished trials per (problem, method)", ge=1)
    batch_size: int = _f(16, "trials in flight at once, across all studies", ge=1)
    hmc_budget_sec: float | None = _f(None, "alias of reference.budget_sec", gt=0)
    method_budget_sec: float = _f(600.0, "wall-clock budget per trial (s)", gt=0)
    objective: Literal["abs", "huber"] = _f(
        "abs", "abs: |llc_hat - llc_ref|; huber: Huber loss of that error with huber_delta"
    )
    huber_delta: float | None = _f(None, "Huber delta; None means 2 x the reference SE", gt=0)
    objectives: list[Literal["error", "runtime"]] = _f(
        ["error"], "[error] (single objective) or [error, runtime] (Pareto front)"
    )
    sampler: Literal["tpe", "random", "qmc", "gp", "cmaes"] = _f(
        "tpe", "Optuna sampler (gp needs torch, cmaes the cmaes package)"
    )
    n_startup_trials: int = _f(10, "random trials before TPE/GP model the space", ge=0)
    seed: int = _f(0, "sampler seed (offset per study) and the seed every trial runs with")
    search_space: dict = _f({}, "per-method search-space overrides {method: {param: ...}}")
    enqueue: dict = _f({}, "per-method warm-start trials {method: [{param: value}, ...]}")
    storage: str | None = _f(
        None, "Optuna storage URL; None: a journal file in <results>/studies/journal.log"
    )
    allow_failed_reference: bool = _f(
        False, "tune problems whose HMC reference failed its quality gate"
    )
    isolate: bool = _f(
        True, "run each trial in a killable child process (hard timeout, crash containment)"
    )
    timeout_grace: float = _f(
        1.5, "a trial is killed after method_budget_sec x timeout_grace (s)", ge=1
    )
    max_consecutive_failures: int | None = _f(
        10, "stop a study after this many failures without any success; None: never", ge=1
    )
    infrastructure_retries: int = _f(
        2, "resubmissions of a trial whose worker or node was lost", ge=0
    )
    pruner: Literal["none", "median", "percentile", "hyperband"] = _f(
        "median",
        "stop trials whose intermediate LLC estimate is worse than other trials' at the same "
        "fraction of their work (single objective only)",
    )
    pruner_warmup: float = _f(
        0.3, "fraction of its work a trial does before it may be pruned", ge=0, lt=1
    )
    pruner_startup_trials: int = _f(
        5, "finished trials a study needs before median/percentile pruning starts", ge=0
    )
    pruner_percentile: float = _f(
        25.0, "percentile pruner: keep trials within this best percentage at a step", gt=0, lt=100
    )


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment YAML."""

    problems: list[ProblemEntry] = _f([], "problems (targets) to study")
    methods: list[Literal["sgld", "vi", "mclmc"]] = _f([], "methods to tune")
    reference: ReferenceConfig = _f(ReferenceConfig(), "HMC reference settings")
    optuna: OptunaConfig = _f(OptunaConfig(), "tuning settings")
    paths: PathsConfig = _f(PathsConfig(), "output locations")


@dataclass(frozen=True)
class Experiment:
    """A loaded experiment: the validated config and its resolved problems, in order."""

    config: ExperimentConfig
    problems: list[ProblemSpec]
    source: str


# ------------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _num(value: Any, kind: type, where: str) -> Any:
    if isinstance(value, bool):
        raise ConfigError(where, f"got {value!r}, expected a {kind.__name__}.")
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(
                where, f"got {value!r}, expected a {kind.__name__}.", "write a number."
            ) from None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(where, f"got {value!r}, expected an integer.")
        return value
    if not isinstance(value, int | float):
        raise ConfigError(where, f"got {value!r}, expected a number.")
    return float(value)


def _check_range(value: Any, meta: dict, where: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    for key, op, word in (
        ("ge", lambda a, b: a >= b, ">="),
        ("gt", lambda a, b: a > b, ">"),
        ("le", lambda a, b: a <= b, "<="),
        ("lt", lambda a, b: a < b, "<"),
    ):
        if key in meta and not op(value, meta[key]):
            raise ConfigError(
                where,
                f"got {value!r}, must be {word} {meta[key]}.",
                f"set a value {word} {meta[key]} ({meta.get('help', '')}).",
            )


def validate(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the type ``tp`` and return it coerced (dataclasses built)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _validate_dataclass(value, tp, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(where, f"is null, expected {_type_name(tp)}.")
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return validate(value, a, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                where,
                f"got {value!r}; allowed: {', '.join(map(repr, choices))}.{hint}",
                "use one of the allowed values.",
            )
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(where, f"got {value!r}, expected a list.")
        (item_tp,) = typing.get_args(tp)
        return [validate(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"got {value!r}, expected a mapping.")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"got {value!r}, expected true or false.")
        return value
    if tp in (int, float):
        return _num(value, tp, where)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"got {value!r}, expected a string.")
        return value
    raise TypeError(f"schema type {tp!r} at {where} is not supported")


def _validate_dataclass(value: Any, cls: type, where: str) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(where, f"got {value!r}, expected a mapping of {cls.__name__} fields.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{prefix}{key}",
                f"unknown key.{hint} Valid keys here: {', '.join(fields)}.",
                "correct the spelling or remove the key.",
            )
    kwargs = {}
    for name, f in fields.items():
        sub = f"{prefix}{name}"
        if name in value:
            v = validate(value[name], hints[name], sub)
        elif f.default is not dataclasses.MISSING:
            v = validate(_as_plain(f.default), hints[name], sub)
        elif f.default_factory is not dataclasses.MISSING:
            v = validate(_as_plain(f.default_factory()), hints[name], sub)
        else:
            raise ConfigError(sub, "is required.", f"add '{name}: ...' ({f.metadata.get('help')}).")
        _check_range(v, f.metadata, sub)
        kwargs[name] = v
    return cls(**kwargs)


def _as_plain(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def as_dict(obj: Any) -> dict:
    """A resolved dataclass as plain nested dicts (what gets hashed and stored)."""
    return dataclasses.asdict(obj)


# -------------------------------------------------------------------------------- presets


def preset_names(group: str, search: list[Path] | None = None) -> list[str]:
    """Available preset names of a group, user directories first."""
    names = set()
    for d in _preset_dirs(group, search):
        names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def _preset_dirs(group: str, search: list[Path] | None) -> list[Path]:
    dirs = [Path(s) / group for s in (search or [])]
    dirs.append(Path(str(resources.files("lambda_hat") / "conf" / group)))
    return [d for d in dirs if d.is_dir()]


def load_preset(group: str, name: str, where: str, search: list[Path] | None = None) -> dict:
    """The preset ``conf/<group>/<name>.yaml`` as a dict (a config-local ``conf/`` wins)."""
    for d in _preset_dirs(group, search):
        path = d / f"{name}.yaml"
        if path.is_file():
            data = _read_yaml(path)
            if data is None:
                return {}
            if not isinstance(data, dict):
                raise ConfigError(where, f"preset {path} is not a mapping.", source=str(path))
            return data
    names = preset_names(group, search)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        where,
        f"no {group} preset named {name!r}.{hint} Available: {', '.join(names)}.",
        f"use an available name or add conf/{group}/{name}.yaml next to the config.",
    )


def resolve_problem(entry: ProblemEntry | dict, where: str = "problem", search=None) -> ProblemSpec:
    """Compose presets and overrides into a fully resolved, type-checked :class:`ProblemSpec`."""
    if not isinstance(entry, ProblemEntry):
        entry = _validate_dataclass(entry, ProblemEntry, where)
    for key in entry.overrides:
        if key not in PRESET_GROUPS:
            raise ConfigError(
                f"{where}.overrides.{key}",
                f"unknown override group. Valid groups: {', '.join(PRESET_GROUPS)}.",
                "put overrides under model:, data: or teacher:.",
            )
    resolved: dict[str, Any] = {"seed": entry.seed}
    for group in PRESET_GROUPS:
        base = load_preset(group, getattr(entry, group), f"{where}.{group}", search)
        extra = entry.overrides.get(group) or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{where}.overrides.{group}", f"got {extra!r}, expected a mapping.")
        merged = OmegaConf.to_container(OmegaConf.merge(base, extra), resolve=True)
        resolved[group] = merged
    try:
        spec = _validate_dataclass(resolved, ProblemSpec, "")
    except ConfigError as exc:
        raise _relocate(exc, where, entry) from None
    _check_problem(spec, where)
    return spec


def _relocate(exc: ConfigError, where: str, entry: ProblemEntry) -> ConfigError:
    """Point an error in a merged preset at the override or preset it came from."""
    group, _, rest = exc.where.partition(".")
    first = rest.split(".")[0].split("[")[0] if rest else ""
    if group in PRESET_GROUPS and first in (entry.overrides.get(group) or {}):
        loc = f"{where}.overrides.{exc.where}"
    elif group in PRESET_GROUPS:
        loc = f"{where}.{group} (preset {getattr(entry, group)!r}).{rest}"
    else:
        loc = f"{where}.{exc.where}"
    return ConfigError(loc, exc.problem, exc.fix)


def _check_problem(spec: ProblemSpec, where: str) -> None:
    m = spec.model
    if m.family == "dln":
        if m.bias:
            raise ConfigError(
                f"{where}.model.bias",
                "deep linear networks have no bias.",
                "set model.bias: false or use family: mlp.",
            )
        if m.widths is None:
            raise ConfigError(
                f"{where}.model.widths",
                "a deep linear network needs explicit hidden widths.",
                "set model.widths, e.g. [3] (or [] for plain linear regression).",
            )
    if m.widths is not None and any(w < 1 for w in m.widths):
        raise ConfigError(f"{where}.model.widths", f"got {m.widths}, widths must be >= 1.")
    if m.widths is None and m.target_params is None and m.depth > 0:
        raise ConfigError(
            f"{where}.model",
            "neither widths nor target_params is set.",
            "set model.widths (list of hidden widths) or model.target_params.",
        )
    t = spec.teacher
    if t.rank is not None:
        first_out = t.widths if t.widths is not None else m.widths or [spec.data.output_dim]
        limit = min(spec.data.input_dim, (first_out or [spec.data.output_dim])[0])
        if t.rank > limit:
            raise ConfigError(
                f"{where}.teacher.rank",
                f"got {t.rank}, but the teacher's first layer is at most rank {limit}.",
                f"use a rank between 0 and {limit}.",
            )
    if m.train.batch_size is not None and m.train.batch_size > spec.data.n:
        raise ConfigError(
            f"{where}.model.train.batch_size",
            f"got {m.train.batch_size}, larger than data.n = {spec.data.n}.",
            "use a smaller batch or null for full batch.",
        )


# --------------------------------------------------------------------------------- loader


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            str(path), f"cannot read the file ({exc.strerror}).", "check the path."
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        what = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            str(path),
            f"YAML syntax error at {loc}: {what}.",
            "fix the indentation/quoting there.",
        ) from None


def load_experiment(path: str | Path, overrides: dict | None = None) -> Experiment:
    """Read, compose and validate an experiment YAML; raises :class:`ConfigError`.

    ``overrides`` (for CLI flags) deep-merge into the file's contents before validation.
    Presets are looked up in ``<config dir>/conf/<group>/`` first, then in the package.
    """
    path = Path(path)
    raw = _read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "the file must be a mapping with a 'problems:' list.")
    if overrides:
        raw = OmegaConf.to_container(OmegaConf.merge(raw, overrides), resolve=True)
    try:
        cfg = _validate_dataclass(raw, ExperimentConfig, "")
        if not cfg.problems:
            raise ConfigError("problems", "is empty.", "list at least one problem.")
        cfg = _unify_budgets(cfg)
        search = [path.parent / "conf"]
        problems = [
            resolve_problem(p, f"problems[{i}]", search) for i, p in enumerate(cfg.problems)
        ]
    except ConfigError as exc:
        raise ConfigError(exc.where, exc.problem, exc.fix, source=str(path)) from None
    return Experiment(config=cfg, problems=problems, source=str(path))


def _unify_budgets(cfg: ExperimentConfig) -> ExperimentConfig:
    """``optuna.hmc_budget_sec`` is an alias of ``reference.budget_sec``: keep one value."""
    alias, canon = cfg.optuna.hmc_budget_sec, cfg.reference.budget_sec
    if alias is None:
        return cfg
    if canon is not None and canon != alias:
        raise ConfigError(
            "optuna.hmc_budget_sec",
            f"is {alias} but reference.budget_sec is {canon}.",
            "set only one of them.",
        )
    ref = dataclasses.replace(cfg.reference, budget_sec=alias)
    return dataclasses.replace(cfg, reference=ref)
