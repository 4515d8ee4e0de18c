"""``quasar anchors``: image anchors from prompt data, added to a bundle as a named set."""
from . import _evaluation as E
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="anchors",
    summary="Build image anchors from prompt data and add them to BUNDLE as a named set.",
    description="The bundle is modified in place, atomically. See docs/evaluate.md.",
    target="quasar.evaluate.cli:anchors",
    extra="evaluate",
    requires=E.REQUIRES,
    user_errors=E.USER_ERRORS,
    interrupt_hint=E.INTERRUPT_HINT,
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
    ],
    examples=["quasar anchors B --prompt-data KADIS700k --data-root /data"],
)
