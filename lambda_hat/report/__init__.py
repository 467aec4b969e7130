"""``lambda-hat report`` and ``lambda-hat plots``: what they read (``data``), the tables and
figures they show, the page. They read stored files only, through :mod:`lambda_hat.layout`.
"""

from lambda_hat._exports import lazy_exports

__all__ = [
    "run_verdict",
    "make_plots",
    "make_report",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "run_verdict": "checks",
        "make_plots": "plots",
        "make_report": "page",
    },
)
