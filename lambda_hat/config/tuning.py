"""The experiment schema, preset composition and the one config loader.

An experiment YAML is read once, presets are composed with OmegaConf, and every value is
checked against the schema classes below *before any work starts* (pydantic, through
:mod:`lambda_hat.config.schema`). A :class:`ConfigError` names the YAML path
(``problems[0].overrides.model.depht``), the value it got, what is allowed and how to fix it;
an unknown key is never silently kept.

Field docs follow the Parsl habit: each field says its type, unit, default and what ``None``
means, in the help text next to it.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf

from lambda_hat.config.schema import ConfigError, config_dataclass, field, validate
from lambda_hat.methods import METHODS

PRESET_GROUPS = ("model", "data", "teacher")
MethodName = Literal[METHODS]  # the registry's names: sgld, vi, mclmc


# ----------------------------------------------------------------------------- problem schema


@config_dataclass
class TrainConfig:
    """How w* is obtained from the student's initialization (optax, compiled loop)."""

    optimizer: Literal["adam", "sgd"] = field("adam", "optax optimizer")
    lr: float = field(0.01, "learning rate", gt=0)
    schedule: Literal["cosine", "constant"] = field(
        "cosine", "cosine decays lr to lr/100 so w* settles in a minimum; constant keeps it"
    )
    steps: int = field(2000, "optimizer steps", ge=1)
    batch_size: int | None = field(None, "minibatch size; None trains full-batch", ge=1)


@config_dataclass
class ModelConfig:
    """Student architecture. Input/output sizes come from the data section."""

    family: Literal["mlp", "dln"] = field("mlp", "mlp, or dln (deep linear network, no bias)")
    depth: int = field(2, "number of hidden layers (ignored when widths is given)", ge=0)
    widths: list[int] | None = field(None, "hidden widths; None derives them from target_params")
    target_params: int | None = field(None, "parameter budget that fixes equal hidden widths", ge=1)
    activation: Literal["tanh", "relu", "gelu", "identity"] = field("tanh", "hidden activation")
    bias: bool = field(True, "bias terms (must be false for dln)")
    init_scale: float = field(1.0, "weights ~ N(0, init_scale^2 / fan_in)", gt=0)
    train: TrainConfig = field(TrainConfig(), "training of w*")


@config_dataclass
class DataConfig:
    """Synthetic regression data y = teacher(x) + noise * N(0, 1)."""

    n: int = field(1000, "number of training samples", ge=2)
    input_dim: int = field(4, "input dimension H_0", ge=1)
    output_dim: int = field(1, "output dimension H_L", ge=1)
    x_dist: Literal["gauss", "uniform"] = field("gauss", "N(0, I) or U[-1, 1]^input_dim inputs")
    noise: float = field(0.1, "Gaussian noise sigma; L_n is the Gaussian NLL at this sigma", gt=0)


@config_dataclass
class TeacherConfig:
    """The network that generates the targets."""

    widths: list[int] | None = field(None, "teacher hidden widths; None uses the student's")
    activation: Literal["tanh", "relu", "gelu", "identity"] | None = field(
        None, "teacher activation; None uses the student's"
    )
    rank: int | None = field(
        None, "rank of the teacher's first weight matrix; None keeps it full", ge=0
    )
    scale: float = field(1.0, "teacher weights ~ N(0, scale^2 / fan_in)", ge=0)


@config_dataclass
class ProblemSpec:
    """A fully resolved problem: presets composed, overrides merged, types checked."""

    model: ModelConfig = field(help="the student, composed from conf/model/ and overrides")
    data: DataConfig = field(help="the data, composed from conf/data/ and overrides")
    teacher: TeacherConfig = field(help="the teacher, composed from conf/teacher/ and overrides")
    seed: int = field(help="seed for data, teacher, student init and training")


@config_dataclass
class ProblemEntry:
    """A problem as written in the experiment YAML."""

    model: str = field("small", "preset name in conf/model/")
    data: str = field("base", "preset name in conf/data/")
    teacher: str = field("_null", "preset name in conf/teacher/ (_null: random student-shaped net)")
    seed: int = field(0, "seed for data, teacher, student init and training")
    overrides: dict = field({}, "deep-merged into the presets: {model: {...}, data: {...}, ...}")


# -------------------------------------------------------------------------- experiment schema


@config_dataclass
class ReferenceConfig:
    """The HMC (NUTS) reference and the posterior every method targets."""

    chains: int = field(4, "independent chains, vmapped", ge=2)
    draws: int = field(10000, "kept draws per chain after warm-up", ge=20)
    warmup: int = field(1000, "window-adaptation steps per chain (discarded)", ge=20)
    target_accept: float = field(0.8, "NUTS target acceptance", gt=0, lt=1)
    max_tree_depth: int = field(10, "NUTS maximum tree depth", ge=1)
    beta: float | None = field(None, "inverse temperature; None means 1/log(n)", gt=0)
    gamma: float = field(1.0, "localization strength gamma", ge=0)
    budget_sec: float | None = field(
        None, "wall-clock budget per reference (s), warm-up included; None: none", gt=0
    )
    chunk: int = field(1000, "draws per chunk between budget checks / progress lines", ge=1)
    rhat_max: float = field(1.01, "quality gate: largest acceptable rank-normalized R-hat", gt=1)
    ess_min: float = field(400.0, "quality gate: smallest acceptable bulk ESS", ge=0)
    max_divergence_frac: float = field(
        0.01, "quality gate: largest acceptable fraction of divergent draws", ge=0, le=1
    )
    seed: int = field(0, "sampling seed")
    workers: int | None = field(None, "references computed at once; None: one per core", ge=1)


@config_dataclass
class PathsConfig:
    """Where outputs go (relative paths are relative to the working directory)."""

    artifacts: str = field("artifacts", "problems, references and runs")
    results: str = field("results", "studies and Parquet tables")


@config_dataclass
class ValidateConfig:
    """Re-runs of each study's best configurations on fresh seeds, after tuning (the best of N
    noisy trials is biased low: its error is partly its seed's luck)."""

    top_k: int = field(3, "configurations re-run per study: the best successful trials", ge=1)
    seeds: int = field(3, "fresh seeds per configuration (tuning seed + 1, + 2, ...)", ge=1)


@config_dataclass
class WarmConfig:
    """Warm trial processes: one per worker runs trial after trial (imports, problems and
    compiled programs paid once), replaced by a fresh one after a failure that kills it and
    when it reaches either limit below (plans/warm-workers.md)."""

    max_trials: int = field(
        200, "trials one warm process runs before a fresh one replaces it", ge=1
    )
    max_rss_mb: float | None = field(
        4096.0, "replace the warm process when its resident memory exceeds this (MiB)", gt=0
    )


@config_dataclass
class OptunaConfig:
    """Tuning workflow settings (parsl-optuna).

    ``search_space`` and ``enqueue`` are keyed by method name and checked against the method's
    own search space (:func:`lambda_hat.methods.search_space`) by the workflow before any work.
    ``search_space.<method>.<param>`` is either a fixed value (the parameter is not tuned) or a
    mapping ``{low, high, log}`` (numbers) / ``{choices: [...]}`` (categorical) replacing the
    default range. ``enqueue.<method>`` is a list of hyperparameter mappings tried first
    (warm start), once per study.
    """

    max_trials: int = field(100, "finished trials per (problem, method)", ge=1)
    batch_size: int | None = field(
        None,
        "trials in flight at once, across all studies; None: the executors' capacity "
        "(workers per node x nodes per block x max blocks)",
        ge=1,
    )
    hmc_budget_sec: float | None = field(None, "alias of reference.budget_sec", gt=0)
    method_budget_sec: float = field(600.0, "wall-clock budget per trial (s)", gt=0)
    objective: Literal["abs", "huber"] = field(
        "abs", "abs: |llc_hat - llc_ref|; huber: Huber loss of that error with huber_delta"
    )
    huber_delta: float | None = field(None, "Huber delta; None means 2 x the reference SE", gt=0)
    objectives: list[Literal["error", "runtime"]] = field(
        ["error"], "[error] (single objective) or [error, runtime] (Pareto front)"
    )
    sampler: Literal["tpe", "random", "qmc", "gp", "cmaes", "grid"] = field(
        "tpe",
        "Optuna sampler (gp needs torch, cmaes the cmaes package; grid: every point of the "
        "search space's finite choices once, see grid_points)",
    )
    n_startup_trials: int = field(
        10,
        "tpe: scrambled Sobol (QMC) trials before TPE models the space; gp, cmaes: their "
        "random start-up trials",
        ge=0,
    )
    grid_points: int | None = field(
        None,
        "sampler: grid: cut every numeric range into this many points (log-spaced for log "
        "ranges; other samplers ignore it); None: each searched parameter needs "
        "{choices: [...]} or a stepped range of at most 100 values",
        ge=2,
    )
    stop_after_stale: int | None = field(
        None,
        "stop a study early (converged) when its last K finished trials improved the best "
        "|error| by no more than stop_min_improvement in total; None: run max_trials",
        ge=1,
    )
    stop_min_improvement: float | None = field(
        None, "the improvement stop_after_stale calls real; None: the reference's SE", ge=0
    )
    seed: int = field(0, "sampler seed (offset per study) and the seed every trial runs with")
    search_space: dict = field({}, "per-method search-space overrides {method: {param: ...}}")
    enqueue: dict = field({}, "per-method warm-start trials {method: [{param: value}, ...]}")
    storage: str | None = field(
        None,
        "Optuna storage: a database URL (sqlite:///..., postgresql://...) or a journal file "
        "path; None: the journal file <results>/studies/journal.log",
    )
    allow_failed_reference: bool = field(
        False, "tune problems whose HMC reference failed its quality gate"
    )
    isolate: bool = field(
        True, "run each trial in a killable child process (hard timeout, crash containment)"
    )
    timeout_grace: float = field(
        1.5, "a trial is killed after method_budget_sec x timeout_grace (s)", ge=1
    )
    warm: WarmConfig | None = field(
        WarmConfig(),
        "keep a warm trial process per worker (with isolate); None: a fresh process per trial",
    )
    max_consecutive_failures: int | None = field(
        10, "stop a study after this many failures without any success; None: never", ge=1
    )
    infrastructure_retries: int = field(
        2, "resubmissions of a trial whose worker or node was lost", ge=0
    )
    pruner: Literal["none", "median", "percentile", "hyperband"] = field(
        "median",
        "stop trials whose intermediate LLC estimate is worse than other trials' at the same "
        "fraction of their work (single objective only)",
    )
    pruner_warmup: float = field(
        0.3, "fraction of its work a trial does before it may be pruned", ge=0, lt=1
    )
    pruner_startup_trials: int = field(
        5, "finished trials a study needs before median/percentile pruning starts", ge=0
    )
    pruner_percentile: float = field(
        25.0, "percentile pruner: keep trials within this best percentage at a step", gt=0, lt=100
    )
    validate: ValidateConfig | None = field(
        ValidateConfig(),
        "after tuning, re-run each study's top_k configurations on fresh seeds and recommend "
        "the best validated mean |error|; None: no validation",
    )


@config_dataclass
class ExperimentConfig:
    """A whole experiment YAML."""

    problems: list[ProblemEntry] = field([], "problems (targets) to study")
    methods: list[MethodName] = field([], "methods to tune")
    reference: ReferenceConfig = field(ReferenceConfig(), "HMC reference settings")
    optuna: OptunaConfig = field(OptunaConfig(), "tuning settings")
    paths: PathsConfig = field(PathsConfig(), "output locations")


@dataclass(frozen=True)
class Experiment:
    """A loaded experiment: the validated config and its resolved problems, in order."""

    config: ExperimentConfig
    problems: list[ProblemSpec]
    source: str


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
        entry = validate(entry, ProblemEntry, where)
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
        spec = validate(resolved, ProblemSpec, "")
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


def read_yaml(path: str | Path) -> Any:
    """A YAML file's contents; a :class:`ConfigError` naming the file when it cannot be read
    or parsed (the one reader of every config file)."""
    return _read_yaml(Path(path))


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
        cfg = validate(raw, ExperimentConfig, "")
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
