"""Options shared by several commands: one name, one short flag, one description per concept.

Use them as they are, or with a command-specific description::

    from quasar.commands import options as O
    options = [O.BUNDLE, O.OUT.but(help="output folder", metavar="DIR"), ...]

No short flag may mean two things (tests/test_cli.py checks every command): -o --out,
-b --bundle, -m --model, -a --anchors, -r --resolution, -d --device, -t --threads,
-w --workers, -q --quiet (here); -g --group-factor (score).

Choices and ranges are declared here (vocabularies from quasar/constants.py), once: the
command line is checked against them while it is parsed, and the command bodies receive
typed, checked values (they do not check again).
"""
from __future__ import annotations

from quasar.constants import (AGGREGATIONS, BACKENDS, DEFAULT_MODEL, DEVICES,  # noqa: F401
                              ENGINES, EXPORTERS, INPUT_TYPES, RESOLUTIONS, RUNTIME_PRECISIONS,
                              VARIANT_PRECISIONS)

from .base import Option, integer, lower, names, number  # noqa: F401 - re-exported

# --- what to run on
BUNDLE = Option("bundle", "bundle directory (from quasar export), or URL: hf://ORG/REPO[@REV], "
                "s3://, gs://, https:// (docs/remote.md)", short="-b", metavar="DIR",
                default_text="$QUASAR_DEFAULT_BUNDLE, else the cached bundle of --model")
MODEL = Option("model", "model id whose bundle is in the cache ($QUASAR_HOME/bundles)",
               short="-m", metavar="ID", default_text=DEFAULT_MODEL)
ANCHORS = Option("anchors", 'anchor set(s), comma-separated, or "all"', short="-a",
                 metavar="NAMES")
RESOLUTION = Option("resolution", "input resolution", short="-r", metavar="RES",
                    choices=RESOLUTIONS, default_text="the bundle's")
DEVICE = Option("device", "execution device", short="-d", metavar="DEV", choices=DEVICES,
                type=lower)
BATCH_SIZE = Option("batch_size", "images per inference batch", metavar="N", type=integer,
                    minimum=1)
THREADS = Option("threads", "ONNX Runtime intra-op threads", short="-t", metavar="N",
                 type=integer, minimum=1, default_text="ONNX Runtime's choice")
WORKERS = Option("workers", "image decoding threads", short="-w", metavar="N", type=integer,
                 minimum=1, default_text="min(4, CPUs)")
PRECISION = Option("precision", "encoder precision: a variant from `quasar optimize` that "
                   "passed its agreement gate; auto = the fastest gated variant this hardware "
                   "runs fast", metavar="P", choices=RUNTIME_PRECISIONS)
BACKEND = Option("backend", "inference backend", metavar="NAME", choices=BACKENDS,
                 default_text="the variant's, else onnxruntime")
FAST_DECODE = Option("fast_decode", "DCT-scaled JPEG decoding, once `quasar optimize "
                     "--fast-decode` gated it")

# --- output
OUT = Option("out", "output file", short="-o", metavar="FILE")
OVERWRITE = Option("overwrite", "replace an existing output instead of refusing")
QUIET = Option("quiet", "no progress bar, no summary (errors are still shown)", short="-q")

# --- evaluation (datasets and anchor recipes; quasar anchors / evaluate / reproduce)
DATA_ROOT = Option("data_root", "folder holding one folder per dataset, named as the paper "
                   "writes it (DIR/KonIQ10k, DIR/KADIS700k, ...)", metavar="DIR")
PROMPT_DATA = Option("prompt_data", "prompt data the anchors are built from", metavar="NAME")
PROMPT_ROOT = Option("prompt_root", "the prompt dataset's folder", metavar="DIR",
                     default_text="DATA_ROOT/<prompt data>")
PROMPT_DATA_SUBSET = Option("prompt_data_subset", "subset of the prompt dataset",
                            metavar="NAME", default_text="the reader's")
TARGET_CV_FOLDS = Option("target_cv_folds", "folds of the reference's split", metavar="K",
                         type=integer, minimum=1, default_text="one fold of all images")
AGGREGATION_TYPE = Option("aggregation_type", "how anchors are formed: the mean of each side, "
                          "or k-means centres (scikit-learn, seeded)", metavar="TYPE",
                          choices=AGGREGATIONS)
PROMPT_RATIO = Option("prompt_ratio", "fraction of the prompt data used for the anchors",
                      metavar="F", type=number, above=0, maximum=1)
MEDIAN_OFFSET_RATIO = Option("median_offset_ratio", "AVA: drop this fraction nearest the "
                             "median on each side", metavar="F", type=number, minimum=0,
                             below=1, default_text="none dropped")
N_CLUSTERS = Option("n_clusters", "k-means clusters per side (--aggregation-type clustering)",
                    metavar="K", type=integer, minimum=1)
SEED = Option("seed", "seed of the reference's random streams", metavar="N", type=integer,
              minimum=0)
PROMPT_EMBEDDINGS = Option("prompt_embeddings", "the authors' released prompt embeddings "
                           "(<name>.pt + <name>.json; needs torch) instead of the images",
                           metavar="FILE")
NO_CACHE = Option("no_cache", "do not read or write the embeddings cache")
