"""HMC (NUTS) references: computed, stored and gated per problem, with the curvature that
sets every method's step-size limit, and the one driver-side reference stage that
``parsl-optuna``, ``lambda-hat run`` and ``lambda-hat reference`` share.

Modules: ``settings`` (the ``reference`` section), ``nuts`` (compute a reference), ``store``
(``ref.json``, the gate), ``curvature`` (a_max), ``kinds`` (``reference: theory | none``: no
NUTS, the curvature record only), ``stage`` (the stage), ``app`` (its Parsl app).
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "curvature_record",
    "ensure_reference",
    "evaluate_gate",
    "is_reference",
    "load_reference",
    "load_reference_at",
    "reference_job",
    "reference_settings",
    "reference_stage",
    "ReferenceConfig",
    "References",
    "reference_table",
    "unusable",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "curvature_record": "curvature",
        "ensure_reference": "nuts",
        "evaluate_gate": "store",
        "is_reference": "stage",
        "load_reference": "store",
        "load_reference_at": "store",
        "reference_job": "nuts",
        "reference_settings": "store",
        "reference_stage": "stage",
        "ReferenceConfig": "settings",
        "References": "stage",
        "reference_table": "table",
        "unusable": "stage",
    },
)
