"""``quasar anchors``: image anchors from prompt data, added to a bundle as a named set."""
from . import _evaluation as E
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="anchors",
    summary="Build image anchors from prompt data and add them to BUNDLE as a named set.",
    description="The bundle is modified in place, atomically. See docs/evaluate.md.",
    target="quasar.evaluate.cli:anchors",
    **E.COMMAND_KW,
    options=[
        O.BUNDLE.but(help="bundle directory (from quasar export); modified in place",
                     default_text=None),
        O.PROMPT_DATA.but(help="prompt data: KADIS700k | PIPAL (references vs distortions) | "
                          "AVA (median split)"),
        O.DATA_ROOT, O.PROMPT_ROOT, O.PROMPT_DATA_SUBSET,
        *E.RECIPE,
        opt("name", "anchor set name", metavar="NAME",
            default_text="the prompt data in lower case, e.g. kadis700k"),
        O.RESOLUTION, O.PROMPT_EMBEDDINGS,
        O.RESOLUTION.but(name="prompt_resolution", short=None,
                         help="resolution of the prompt images (same as --resolution)",
                         default_text="--resolution"),
        *E.ENGINE,
        O.QUIET.but(help="no progress bar, no summary line"),
        # anchors from the user's own images (docs/anchors.md)
        opt("good", "your good images: a folder or @list.txt (with --bad)", metavar="DIR|@LIST"),
        opt("bad", "your bad images: a folder or @list.txt (with --good)", metavar="DIR|@LIST"),
        opt("scores", "a CSV / JSONL / Parquet with a path and a score column (your ratings or "
            "a quasar score output), split into good and bad", metavar="FILE"),
        opt("split", "how --scores is split: median | quantile:Q (good = top Q, bad = bottom "
            "Q)", metavar="SPLIT", default_text="median"),
        opt("quantile", "Q of --split quantile", metavar="Q", type=O.number, above=0,
            below=0.5),
        opt("score_column", "the score column of --scores", metavar="NAME",
            default_text="the only score_* column, else score / mos / rating"),
        opt("path_column", "the path column of --scores", metavar="NAME", default_text="path"),
        opt("root", "folder that relative paths in --scores are relative to", metavar="DIR",
            default_text="the current folder, then the score file's folder"),
        opt("holdout", "fraction of the --scores images held out to print the new anchors' "
            "SRCC", metavar="F", type=O.number, minimum=0, below=1, default_text="0.2"),
        opt("folds", "print K-fold SRCC instead (the anchors then use every image)",
            metavar="K", type=O.integer, minimum=2, default_text="no folds"),
        opt("skip_failed", "leave out images that cannot be decoded instead of failing"),
        O.OVERWRITE.but(help="replace an existing anchor set of the same --name"),
    ],
    examples=["quasar anchors B --prompt-data KADIS700k --data-root /data",
              "quasar anchors B --good good/ --bad @bad.txt --name mine",
              "quasar anchors B --scores ratings.csv --split quantile:0.25 --name mine"],
)
