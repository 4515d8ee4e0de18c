"""``quasar score``: images -> one row per input (CSV on stdout, or --out .csv/.jsonl/.parquet)."""
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="score",
    summary="Score images: files, directories (recursive), globs, @list.txt, or - (paths on "
            "stdin).",
    description="One row per input: path, score_<anchor set>..., status, error. Rows are "
                "flushed as they are scored: a killed run loses nothing and --resume "
                "continues it. A summary goes to stderr. See docs/score.md.",
    target="quasar.runtime.cli:score",
    extra="cpu",
    requires=("onnxruntime",),
    options=[
        opt("inputs", "image files, directories, globs, @list.txt files, - (stdin)",
            metavar="INPUT"),
        O.BUNDLE,
        O.MODEL,
        O.ANCHORS,
        O.RESOLUTION,
        O.DEVICE,
        O.BATCH_SIZE,
        O.WORKERS,
        O.OUT.but(help="output .csv / .jsonl / .parquet", default_text="CSV on stdout"),
        opt("resume", "continue --out: skip inputs with an ok row, retry the others (refused "
            "when --out was made by another bundle, resolution, anchors or precision)"),
        opt("force_resume", "with --resume: also continue an output that records no run "
            "identity (written by an older quasar)"),
        O.OVERWRITE.but(help="replace an existing --out / --save-embeddings"),
        O.QUIET,
        opt("save_embeddings", "also write the embeddings of the ok rows (.npy or "
            ".safetensors) plus <stem>.paths.txt", metavar="FILE"),
        opt("max_pixels", "refuse images with more pixels (decompression-bomb limit; 0: no "
            "limit)", metavar="N", type=O.integer, default_text="89478485, as Pillow"),
        O.THREADS,
        opt("group_factor", "variable-shape resolutions: group batch-size x N inputs by shape",
            short="-g", metavar="N", type=O.integer),
    ],
    examples=["quasar score photos/ 'more/**/*.jpg' @list.txt -o scores.csv",
              "find /data -name '*.png' | quasar score - -o s.jsonl --save-embeddings e.npy",
              "quasar score photos/ -o scores.csv --resume"],
)
