"""``quasar report``: one self-contained HTML report of one or more score files."""
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="report",
    summary="One self-contained HTML report of score files: distributions, best / worst "
            "galleries, failed inputs, and a comparison of two or more files.",
    description="Score files: the CSV / JSONL / Parquet of quasar score, or any table with a "
                "path and a score column. With 2+ files each is compared with the first: "
                "overlaid distributions, the mean difference with a bootstrap CI, paired "
                "differences on shared images. No network is needed to view the file. "
                "See docs/report.md.",
    target="quasar.evaluate.report:report",
    extra="report",
    requires=("matplotlib",),
    user_errors=(ValueError, OSError),
    options=[
        opt("scores", "score files (.csv / .jsonl / .parquet / .tsv / .json)", metavar="SCORES"),
        O.OUT.but(help="the HTML file to write"),
        opt("top", "images in each best / worst gallery", metavar="N", type=O.integer,
            minimum=0),
        opt("columns", "score columns (anchor sets) to show, comma-separated", metavar="NAMES",
            default_text="every score_* column"),
        opt("path_column", "the path column of the score files", metavar="NAME",
            default_text="path"),
        opt("labels", "names of the files in the report, comma-separated", metavar="NAMES",
            default_text="the file names"),
        opt("key", "how images are matched between files for paired differences",
            metavar="KEY", choices=("path", "name")),
        opt("root", "folder that relative image paths are relative to", metavar="DIR",
            default_text="the current folder, then the score file's folder"),
        opt("thumb_size", "thumbnail size in pixels", metavar="PX", type=O.integer, minimum=1),
        opt("bootstrap", "bootstrap resamples for the confidence intervals", metavar="N",
            type=O.integer, minimum=1),
        O.SEED.but(help="seed of the bootstrap"),
        opt("max_failed", "failed inputs listed per file", metavar="N", type=O.integer,
            minimum=0),
        opt("title", "title of the HTML page", metavar="TEXT", default_text="QUASAR report"),
        O.QUIET.but(help="print nothing (errors are still shown)"),
    ],
    examples=["quasar report scores.csv -o report.html",
              "quasar report before.csv after.jsonl --key name --labels before,after -o cmp.html"],
)
