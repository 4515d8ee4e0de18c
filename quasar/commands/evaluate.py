"""``quasar evaluate``: SRCC / KRCC / PLCC of QUASAR scores on one target dataset."""
from . import _evaluation as E
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="evaluate",
    summary="SRCC (signed and |SRCC|), KRCC, PLCC of QUASAR scores on a target dataset.",
    description="Anchors: the bundle's text set, a stored set (--anchors), or built from the "
                "prompt images' embeddings. See docs/evaluate.md.",
    target="quasar.evaluate.cli:evaluate",
    **E.COMMAND_KW,
    options=[
        O.PROMPT_DATA.but(help="prompt data: text | KADIS700k | PIPAL | AVA"),
        opt("target_data", "target dataset (required): " + E.TARGETS, metavar="NAME"),
        E.BUNDLE, O.DATA_ROOT,
        opt("target_data_subset", "subset of the target dataset: all | train | test",
            metavar="NAME", default_text="the dataset's usual subset"),
        O.TARGET_CV_FOLDS,
        *E.RECIPE[:4], O.RESOLUTION.but(help="input resolution of prompt and target images"),
        E.RECIPE[4],
        O.RESOLUTION.but(name="prompt_resolution", short=None,
                         help="resolution of the prompt images (overrides --resolution)",
                         default_text="--resolution"),
        O.RESOLUTION.but(name="target_resolution", short=None,
                         help="resolution of the target images (overrides --resolution)",
                         default_text="--resolution"),
        opt("target_root", "the target dataset's folder", metavar="DIR",
            default_text="DATA_ROOT/<target data>"),
        O.PROMPT_ROOT, O.PROMPT_DATA_SUBSET,
        O.ANCHORS.but(help="use this anchor set stored in the bundle instead of --prompt-data",
                      metavar="NAME", default_text="built from --prompt-data",
                      aliases=("--anchor-set",)),
        O.MODEL, O.PROMPT_EMBEDDINGS,
        opt("target_embeddings", "the authors' released target embeddings (matched by file "
            "name; needs torch)", metavar="FILE"),
        *E.ENGINE,
        opt("format", "what is printed on stdout", metavar="FMT", choices=("text", "json")),
        O.OUT.but(help="also write the result as JSON to this file"),
        O.QUIET.but(help="no progress bar"),
        opt("report", "also write an HTML report (predicted-vs-subjective scatter) to this "
            "file", metavar="FILE"),
    ],
    examples=["quasar evaluate --prompt-data KADIS700k --target-data KonIQ10k -b B "
              "--data-root /data --target-cv-folds 10"],
)
