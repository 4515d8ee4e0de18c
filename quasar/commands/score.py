"""``quasar score``: images -> one row per input (CSV on stdout, or --out .csv/.jsonl/.parquet)."""
from quasar.constants import ENGINES, INPUT_TYPES

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
        opt("offline", "no network: a --bundle URL uses its cached copy (QUASAR_OFFLINE=1)"),
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
            ".safetensors) plus <stem>.paths.txt; --engine ray: a directory, one "
            "<part>.npy + <part>.paths.txt per part", metavar="FILE"),
        opt("max_pixels", "refuse images with more pixels (decompression-bomb limit; 0: no "
            "limit)", metavar="N", type=O.integer, minimum=0, default_text="89478485, as Pillow"),
        O.THREADS,
        opt("group_factor", "variable-shape resolutions: group batch-size x N inputs by shape",
            short="-g", metavar="N", type=O.integer, minimum=1),
        O.PRECISION,
        O.BACKEND,
        O.FAST_DECODE,
        # dataset files (WebDataset .tar shards, Parquet) - docs/scale.md
        opt("input_type", "how to read input files: auto (by extension: .tar shards, .parquet "
            "files, anything else an image) or force one kind", metavar="KIND",
            choices=INPUT_TYPES),
        opt("image_key", "WebDataset: the image member's extension(s), first match wins",
            metavar="EXTS"),
        opt("image_column", "Parquet: the column of encoded image bytes (or image paths)",
            metavar="NAME", default_text="image, jpg, img... or the only binary column"),
        opt("id_column", "Parquet: the column naming each row", metavar="NAME",
            default_text="the row number"),
        # the Ray engine - docs/scale.md
        opt("engine", "local (this machine) or ray (Ray Data; --out is then a directory of "
            "Parquet parts; needs quasar-iqa[ray])", metavar="NAME", choices=ENGINES),
        opt("address", "--engine ray: the Ray cluster (auto, HOST:PORT)", metavar="ADDR",
            default_text="start a local Ray"),
        opt("gpus_per_worker", "--engine ray: GPUs per scoring actor (> 0: ONNX Runtime on "
            "CUDA); --workers is then the number of actors", metavar="X", type=O.number,
            minimum=0),
        opt("decode_cpus", "--engine ray: CPUs reserved per actor for its decoding threads",
            metavar="X", type=O.number, above=0),
        opt("files_per_part", "--engine ray: loose image files per output part", metavar="N",
            type=O.integer, minimum=1),
        opt("verbose", "also show Ray's own log lines (--engine ray)"),
    ],
    examples=["quasar score photos/ 'more/**/*.jpg' @list.txt -o scores.csv",
              "find /data -name '*.png' | quasar score - -o s.jsonl --save-embeddings e.npy",
              "quasar score photos/ -o scores.csv --resume"],
)
