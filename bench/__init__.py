"""Benchmarks (``quasar bench``): the runtime against the PyTorch reference and the precision
variants of ``quasar optimize``. A tool on top of everything: it may use export, runtime and
evaluate (the layers below never import it)."""
