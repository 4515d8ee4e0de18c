"""``quasar models``: the catalogue and the bundles in the local cache."""
from .base import Command, opt

COMMAND = Command(
    name="models",
    summary="List the model catalogue: id, family, embedding dim, resolutions, heavy, "
            "local bundle.",
    target="quasar.export.cli:models",
    options=[opt("heavy", "hide the heavy architectures (ViT-L/H/bigG, CoCa, DINOv2-L)")],
)
