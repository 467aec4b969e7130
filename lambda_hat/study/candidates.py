"""The selection rule of the validation stage: the candidates a study's trials give, their
fresh-seed outcomes and the pick (:mod:`lambda_hat.study.validation` runs them)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from lambda_hat._io import to_jsonable
from lambda_hat.study import reliability
from lambda_hat.study.scoring import excess_se

__all__ = ["Candidate", "Validated", "pick", "top_candidates", "validation_seeds"]


@dataclass(frozen=True)
class Candidate:
    """One configuration to validate: its rank in the study (1 = best trial), the trial it
    came from, that trial's objective and signed error, and the full resolved hyperparameters
    (what the runs are addressed by)."""

    rank: int
    trial_number: int
    objective: float
    tuned_error: float | None
    hyperparams: dict


@dataclass
class Validated:
    """A candidate's fresh-seed outcomes: the signed error and own SE (``se_hat``, None when
    unknown) of each successful run, the failed-run count, and the reference's SE."""

    candidate: Candidate
    errors: list[float] = field(default_factory=list)
    failed: int = 0
    se_hats: list[float | None] = field(default_factory=list)
    se_ref: float | None = None

    @property
    def abs_errors(self) -> list[float]:
        return [abs(e) for e in self.errors]

    @property
    def mean(self) -> float | None:
        """Mean |error| over the successful runs (what one fresh run is off by, on average)."""
        return statistics.fmean(self.abs_errors) if self.errors else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.abs_errors) if len(self.errors) > 1 else None

    @property
    def mean_error(self) -> float | None:
        """Mean signed error ē: the configuration's bias against the reference."""
        return statistics.fmean(self.errors) if self.errors else None

    @property
    def se_mean(self) -> float | None:
        """SE of ē (:func:`lambda_hat.study.reliability.se_of_mean`)."""
        return reliability.se_of_mean(self.errors, self.se_hats)

    @property
    def z(self) -> float | None:
        return reliability.z_score(self.mean_error, self.se_mean, self.se_ref)

    def bound(self, sigmas: float) -> float | None:
        """|ē| + ``sigmas`` × its SE beyond the reference's (the ``ucb`` objective of the mean,
        :func:`lambda_hat.study.scoring.ucb`); None without a successful run."""
        if not self.errors:
            return None
        return abs(self.mean_error) + sigmas * excess_se(self.se_mean, self.se_ref)


def validation_seeds(tuning_seed: int, n: int) -> list[int]:
    """The ``n`` fresh seeds: ``tuning_seed + 1, ..., tuning_seed + n`` (never the tuning one)."""
    return [int(tuning_seed) + 1 + i for i in range(n)]


def top_candidates(
    scored: Iterable[tuple[float, int, dict, float | None]], k: int
) -> list[Candidate]:
    """The ``k`` best of ``(objective, trial_number, hyperparams, tuned_error)``: lowest
    objective first (ties: earlier trial), one candidate per distinct hyperparameter set."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for objective, number, hp, err in sorted(scored, key=lambda s: (s[0], s[1])):
        key = json.dumps(to_jsonable(hp), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append(Candidate(len(out) + 1, number, objective, err, hp))
        if len(out) == k:
            break
    return out


def pick(validated: list[Validated], sigmas: float | None = None) -> int | None:
    """Index of the recommended candidate: fewest failed seeds, then the best validated error,
    then the better tuning rank; None when no candidate has a successful run. The validated
    error is :meth:`Validated.bound` with ``sigmas`` (objective ``ucb``), else (None) the mean
    |error| (objectives ``abs`` and ``huber``)."""
    usable = [i for i, v in enumerate(validated) if v.errors]
    if not usable:
        return None

    def score(v: Validated) -> float:
        return v.mean if sigmas is None else v.bound(sigmas)

    return min(
        usable,
        key=lambda i: (validated[i].failed, score(validated[i]), validated[i].candidate.rank),
    )
