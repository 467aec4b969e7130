"""A problem: its schema, and its composition from presets and overrides.

A problem is written in a YAML (either kind) as a :class:`ProblemEntry`: one preset name per
group (``conf/{model,data,teacher}/<name>.yaml``, a ``conf/`` next to the config file first,
then the package's), a seed and ``overrides`` deep-merged into the presets with OmegaConf.
:func:`resolve_problem` composes them into a :class:`ProblemSpec`, every value checked (pydantic,
through :mod:`lambda_hat.schema`); its content hash is the problem's pid
(:func:`lambda_hat.problem.build.problem_id`). An error names the YAML path
(``problems[0].overrides.model.depht``) and the preset a bad value came from.

Field docs follow the Parsl habit: each field says its type, unit, default and what ``None``
means, in the help text next to it.
"""

from __future__ import annotations

import dataclasses
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf

from lambda_hat.problem.source import SourceConfig
from lambda_hat.problem.source_entry import source_problems
from lambda_hat.schema import ConfigError, config_dataclass, field, read_yaml, validate

__all__ = [
    "PRESET_GROUPS",
    "REFERENCE_KINDS",
    "DataConfig",
    "ModelConfig",
    "ProblemEntry",
    "ProblemSpec",
    "TeacherConfig",
    "TrainConfig",
    "load_preset",
    "preset_names",
    "reference_of",
    "resolve_entries",
    "resolve_problem",
]

PRESET_GROUPS = ("model", "data", "teacher")

#: What a problem's runs are scored against (``problems[i].reference``): an HMC reference,
#: the theoretical λ (deep linear networks, regular models), or nothing (runs unscored).
REFERENCE_KINDS = ("hmc", "theory", "none")


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
    """Synthetic data: regression y = teacher(x) + noise * N(0, 1) (``loss: gaussian``), or
    classification, labels y ~ softmax(teacher(x)) over output_dim classes (``cross_entropy``)."""

    n: int = field(1000, "number of training samples", ge=2)
    input_dim: int = field(4, "input dimension H_0", ge=1)
    output_dim: int = field(1, "output dimension H_L", ge=1)
    x_dist: Literal["gauss", "uniform"] = field("gauss", "N(0, I) or U[-1, 1]^input_dim inputs")
    noise: float = field(0.1, "Gaussian noise sigma; L_n is the Gaussian NLL at this sigma", gt=0)
    loss: Literal["gaussian", "cross_entropy"] = field(
        "gaussian",
        "L_n, the mean per-example NLL: gaussian at noise sigma, or cross_entropy (softmax over "
        "output_dim >= 2 classes; noise unused)",
    )


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
    source: SourceConfig | None = field(
        None, "a problem from your code (problem.source); None: the presets above"
    )


@config_dataclass
class ProblemEntry:
    """A problem as written in a config file (either kind)."""

    model: str = field("small", "preset name in conf/model/")
    data: str = field("base", "preset name in conf/data/")
    teacher: str = field("_null", "preset name in conf/teacher/ (_null: random student-shaped net)")
    seed: int = field(0, "seed for data, teacher, student init and training")
    overrides: dict = field({}, "deep-merged into the presets: {model: {...}, data: {...}, ...}")
    reference: Literal["hmc", "theory", "none"] | None = field(
        None,
        "what runs are scored against: hmc (a NUTS reference), theory (Aoyagi's λ of a deep "
        "linear network, d/2 of a regular model; no NUTS), none (no reference: runs unscored); "
        "None: hmc, and none for a source's checkpoints; not part of the pid",
    )
    source: str | None = field(
        None,
        "'module:function' returning lambda_hat.SourceProblem (trained params, data, loss), "
        "imported with the config's folder first on sys.path; replaces model/data/teacher",
    )
    args: dict = field({}, "keyword arguments of the source call (seed= is passed too)")
    allow_nonminimum: bool = field(
        False, "estimate a source problem whose gradient at its parameters is far from zero"
    )
    checkpoints: list[int] | None = field(
        None, "the training steps to estimate of a source that returns checkpoints; None: all"
    )


def reference_of(entry: ProblemEntry, spec: ProblemSpec) -> str:
    """The entry's reference kind: as written, else ``none`` for a source's checkpoint (no HMC
    per checkpoint) and ``hmc`` for every other problem."""
    if entry.reference is not None:
        return entry.reference
    checkpoint = spec.source is not None and spec.source.checkpoint is not None
    return "none" if checkpoint else "hmc"


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
            data = read_yaml(path)
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


def resolve_problem(
    entry: ProblemEntry | dict, where: str = "problem", search=None, folder: Path | None = None
) -> ProblemSpec:
    """Compose presets and overrides into a fully resolved, type-checked :class:`ProblemSpec`
    (a ``source:`` entry: call and check the source, ``folder`` first on sys.path)."""
    if not isinstance(entry, ProblemEntry):
        entry = validate(entry, ProblemEntry, where)
    if entry.source is not None:
        specs = _resolve_source(entry, where, folder)
        if len(specs) != 1:
            raise ConfigError(
                f"{where}.checkpoints",
                f"the source returns {len(specs)} checkpoints; here one problem is needed.",
                "pick one checkpoint by its step: checkpoints: [step].",
            )
        return specs[0]
    if entry.checkpoints is not None:
        raise ConfigError(
            f"{where}.checkpoints", "is for a source problem.", "remove checkpoints:."
        )
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
    if spec.data.loss == "cross_entropy" and spec.data.output_dim < 2:
        raise ConfigError(
            f"{where}.data.output_dim",
            f"got {spec.data.output_dim}; cross_entropy needs a logit per class.",
            "set data.output_dim to the number of classes (>= 2).",
        )
    if m.train.batch_size is not None and m.train.batch_size > spec.data.n:
        raise ConfigError(
            f"{where}.model.train.batch_size",
            f"got {m.train.batch_size}, larger than data.n = {spec.data.n}.",
            "use a smaller batch or null for full batch.",
        )


def resolve_entries(
    entry: ProblemEntry | dict, where: str = "problem", search=None, folder: Path | None = None
) -> list[tuple[ProblemEntry, ProblemSpec]]:
    """Every problem of a config entry as (entry, spec), its reference kind filled in
    (:func:`reference_of`): one, or one per checkpoint of a source that returns several (each
    entry then names its step, ``checkpoints: [step]``)."""
    if not isinstance(entry, ProblemEntry):
        entry = validate(entry, ProblemEntry, where)
    specs = (
        _resolve_source(entry, where, folder)
        if entry.source is not None
        else [resolve_problem(entry, where, search, folder)]
    )
    out = []
    for spec in specs:
        src = spec.source
        steps = entry.checkpoints if src is None or src.checkpoint is None else [src.step]
        e = dataclasses.replace(entry, reference=reference_of(entry, spec), checkpoints=steps)
        out.append((e, spec))
    return out


def _resolve_source(entry: ProblemEntry, where: str, folder: Path | None) -> list[ProblemSpec]:
    """The specs of a ``source:`` entry (one per checkpoint of a source that returns several):
    the source called and checked (ConfigErrors before any work), its arrays' digest and sizes
    filled in."""
    default = ProblemEntry()
    for key in (*PRESET_GROUPS, "overrides"):
        if getattr(entry, key) != getattr(default, key):
            raise ConfigError(
                f"{where}.{key}",
                "a source problem takes no presets or overrides (its model and data come from "
                "the source).",
                f"remove {key}:, or pass such settings through args:.",
            )
    resolved = source_problems(entry, where, folder)
    return [validate(r, ProblemSpec, where) for r in resolved]
