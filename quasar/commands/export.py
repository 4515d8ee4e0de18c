"""``quasar export``: a catalogue model -> a verified ONNX bundle (needs the export extra)."""
from . import options as O
from .base import Command, opt

COMMAND = Command(
    name="export",
    summary="Export MODEL to a verified ONNX bundle (ONNX Runtime vs torch parity check).",
    target="quasar.export.cli:export",
    extra="export",
    requires=("torch", "open_clip", "onnx"),
    options=[
        O.MODEL.but(help="catalogue id, e.g. clip-rn50-nopos.openai (see quasar models)",
                    default_text=None),
        O.OUT.but(help="output directory", metavar="DIR",
                  default_text="$QUASAR_HOME/bundles/<model>"),
        opt("checkpoint", "local weights file (OpenAI .pt, open_clip state dict, DINOv2 "
            "hub .pth)", metavar="FILE", default_text="the catalogue's pretrained weights"),
        opt("random_init", "random weights (tests only: scores carry no meaning)"),
        O.SEED.but(help="seed of the random weights (--random-init)"),
        O.OVERWRITE.but(help="replace an existing bundle at --out"),
        opt("exporter", "ONNX exporter", metavar="NAME",
            choices=O.EXPORTERS),
        O.QUIET.but(help="only print the bundle path"),
    ],
    examples=["quasar export clip-rn50-nopos.openai --checkpoint RN50.pt",
              "quasar export clip-rn50-nopos.openai --random-init --seed 0 -o /tmp/b"],
)
