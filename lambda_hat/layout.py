"""Every file and folder name under ``<artifacts>/`` and ``<results>/``: the on-disk layout.

Writers and readers take their names from here, so a name is spelled once and a reader (the
report, ``lambda-hat plots``) learns where things are without importing the stage that wrote
them. Imports nothing of lambda_hat: every stage may use it.

::

    <artifacts>/
      problems/<pid>/                 problem.json, data.npz          (problem.build)
        ref.json, ref_trace.npz, ref_state.npz, ref_progress.json     (the config's reference)
        refs/g_<hash>/                the same files, a reference at another γ
        curvature/c_<hash>.json       a_max at (β, γ)                 (reference.curvature)
      runs/<pid>/<method>/<run id>/   manifest.json, metrics.json, trace.npz, traceback.txt
        isolation/                    payload.json, result.json, progress.json, stop.json,
                                      started.json, traceback.txt, child.log
      .jax_cache/                     JAX's persistent compilation cache (every worker)
    <results>/
      optuna_trials.parquet           one row per tuning trial        (parsl-optuna)
      validation.parquet, validation.json                             (its validation stage)
      class_trials.parquet            one row per class trial and member (class studies)
      transfer.parquet                a class's settings on its holdout members
      classes/<class>/<method>/recommendation.json   a class study's pick, in its units
      llc_runs.parquet                one row per run                 (lambda-hat run)
      studies/journal.log             the default Optuna storage
      studies/optuna_llc/<study>.pkl  study pickles
      runinfo/                        Parsl's logs; blocks-<host>-<pid>.json (parallel.blocks)
      plots/                          lambda-hat plots
      report/                         lambda-hat report: index.html, summary.md, figures/
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = "artifacts"  # the default folders (paths.artifacts, paths.results)
RESULTS = "results"

# ----------------------------------------------------------------------------- artifacts/

PROBLEMS = "problems"
RUNS = "runs"
JAX_CACHE = ".jax_cache"

# a problem's folder
PROBLEM_INFO = "problem.json"
PROBLEM_DATA = "data.npz"
PROBLEM_SOURCE = "source.pkl"  # a source problem's functions (dill; problem.source_store)
REF = "ref.json"
REF_TRACE = "ref_trace.npz"
REF_STATE = "ref_state.npz"  # a running or stopped reference's chains and draws so far
REF_PROGRESS = "ref_progress.json"  # how far a running reference is (read by the driver)
REFS = "refs"  # references at γ other than the config's, one folder each
REFS_PREFIX = "g_"
CURVATURE = "curvature"
CURVATURE_PREFIX = "c_"
CURVATURE_GLOB = f"{CURVATURE_PREFIX}*.json"

# a run's folder
MANIFEST = "manifest.json"
METRICS = "metrics.json"
TRACE = "trace.npz"
TRACEBACK = "traceback.txt"
ISOLATION = "isolation"

# the isolation folder: the files a trial's supervisor and its child process exchange
PAYLOAD = "payload.json"
RESULT = "result.json"
PROGRESS = "progress.json"
STOP = "stop.json"
STARTED = "started.json"
CHILD_LOG = "child.log"

# ------------------------------------------------------------------------------- results/

TRIALS_TABLE = "optuna_trials.parquet"
RUNS_TABLE = "llc_runs.parquet"
VALIDATION_TABLE = "validation.parquet"
VALIDATION_JSON = "validation.json"
CLASS_TRIALS_TABLE = "class_trials.parquet"
TRANSFER_TABLE = "transfer.parquet"
CLASSES = "classes"
RECOMMENDATION_JSON = "recommendation.json"
STUDIES = "studies"
JOURNAL = "journal.log"
PICKLES = "optuna_llc"
RUNINFO = "runinfo"
BLOCKS_RECORD = "blocks.json"  # the single record of earlier versions
BLOCKS_GLOB = "blocks*.json"
PLOTS = "plots"
REPORT = "report"

# what lambda-hat plots and lambda-hat report write
SUMMARY_PNG = "summary.png"
REPORT_HTML = "index.html"
REPORT_MD = "summary.md"
REPORT_FIGURES = "figures"


def problem_dir(artifacts: str | Path, pid: str) -> Path:
    """``<artifacts>/problems/<pid>``."""
    return Path(artifacts) / PROBLEMS / pid


def run_dir(artifacts: str | Path, pid: str, method: str, run_id: str) -> Path:
    """``<artifacts>/runs/<pid>/<method>/<run_id>``."""
    return Path(artifacts) / RUNS / pid / method / run_id


def artifacts_of(run_dir: str | Path) -> Path | None:
    """The ``<artifacts>`` of a run folder (:func:`run_dir`), or None for another path."""
    p = Path(run_dir)
    if len(p.parents) > 3 and p.parents[2].name == RUNS:
        return p.parents[3]
    return None


def isolation_dir(run_dir: str | Path) -> Path:
    """A run's isolation folder: payload, result, ``progress.json``, ``stop.json``."""
    return Path(run_dir) / ISOLATION


def jax_cache(artifacts: str | Path) -> Path:
    """``<artifacts>/.jax_cache``, absolute (workers may run elsewhere)."""
    return Path(artifacts).resolve() / JAX_CACHE


def studies_dir(results: str | Path) -> Path:
    """``<results>/studies``."""
    return Path(results) / STUDIES


def journal_path(results: str | Path) -> Path:
    """The default study storage: ``<results>/studies/journal.log``."""
    return studies_dir(results) / JOURNAL


def class_recommendation(results: str | Path, name: str, method: str) -> Path:
    """A class study's recommendation (its settings in transferable units)."""
    return Path(results) / CLASSES / name / method / RECOMMENDATION_JSON


def pickle_path(results: str | Path, study: str) -> Path:
    """``<results>/studies/optuna_llc/<study>.pkl``."""
    return studies_dir(results) / PICKLES / f"{study}.pkl"


def blocks_record(run_dir: str | Path, host: str, os_pid: int) -> Path:
    """``<run_dir>/blocks-<host>-<os_pid>.json``: one driver's batch-job record."""
    return Path(run_dir) / f"blocks-{host}-{os_pid}.json"


def reference_png(pid: str) -> str:
    """The file name of a problem's reference figure (``lambda-hat plots``)."""
    return f"reference_{pid}.png"


def study_png(pid: str, method: str) -> str:
    """The file name of a study's figure (``lambda-hat plots``)."""
    return f"study_{pid}_{method}.png"
