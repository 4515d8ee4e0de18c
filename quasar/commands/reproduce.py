"""``quasar reproduce``: the paper's grid (prompt data x target datasets)."""
from . import _evaluation as E
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="reproduce",
    summary="The paper's grid (prompt data x target datasets) -> results.csv/.json/.md in --out.",
    description="Missing datasets are reported and their cells skipped. See docs/evaluate.md.",
    target="quasar.evaluate.cli:reproduce",
    **E.COMMAND_KW,
    options=[
        E.BUNDLE, O.DATA_ROOT.but(help=O.DATA_ROOT.help + " (required)"),
        O.OUT.but(help="output folder", metavar="DIR"),
        opt("prompts", "comma-separated prompt data", metavar="NAMES", type=O.names,
            default_text="text,KADIS700k,PIPAL,AVA"),
        opt("targets", "comma-separated target datasets", metavar="NAMES", type=O.names,
            default_text="all eight: " + E.TARGETS.replace(" | ", ",")),
        O.TARGET_CV_FOLDS,
        *E.RECIPE[:4], O.RESOLUTION, E.RECIPE[4],
        opt("resolutions", "per-dataset resolutions: 'paper' (the paper's runs, "
            "docs/evaluate.md 3a) and/or NAME=RES pairs, comma-separated, e.g. paper,SPAQ=512",
            metavar="TABLE", type=O.names, default_text="--resolution for every dataset"),
        O.MODEL,
        *E.ENGINE,
        O.QUIET.but(help="no progress bar, no table on stdout"),
        opt("report", "also write report.html in --out (a scatter per cell, the grid as a "
            "table)"),
    ],
    examples=["quasar reproduce -b B --data-root /data -o results/"],
)
