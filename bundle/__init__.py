"""The bundle layer: the one place that reads, validates, writes and edits a bundle.

``bundle.json`` (:mod:`.manifest`), ``anchors.safetensors`` (:mod:`.anchors`), the bundle
directory (:mod:`.io`: :func:`load_bundle`, :func:`write_bundle`, :func:`edit_bundle`) and the
atomic file/directory helpers every writer in QUASAR uses (:mod:`.atomic`). Used by export and
runtime alike; imports only numpy, safetensors and :mod:`quasar.models`.
"""
from .io import (Bundle, BundleEditor, add_anchor_set, bundle_anchor_set, edit_bundle,  # noqa: F401
                 file_checksums, finalise, load_bundle, read_manifest, sha256_file,
                 write_bundle, write_manifest)
from .manifest import BundleManifest, EncoderInfo  # noqa: F401
