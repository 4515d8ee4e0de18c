"""Not a package: the root folder of a QUASAR source tree (issue 18 #8).

Python puts the current folder first on ``sys.path``. Run from the folder that holds a clone
named ``quasar``, ``import quasar`` finds the clone before the installed package: without this
file the clone is taken as a namespace package (the editable install's finder comes after the
path search), and ``from quasar import Scorer`` fails with "unknown location". With it, that
import lands here, and this file hands over to the real package: the installed ``quasar``
(this tree's editable install, or any other), looked up without the clone's parent folder.

Imported under any other name (a test runner walking up from tests/), it does nothing.
"""
import importlib
import os
import sys


def _installed_quasar():
    """The ``quasar`` package found without the folder holding this clone on sys.path."""
    parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    me = sys.modules.pop(__name__)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != parent]
    try:
        return importlib.import_module(__name__)
    except ImportError as exc:
        sys.modules[__name__] = me
        raise ImportError(
            f"{os.path.dirname(os.path.abspath(__file__))} is a QUASAR source tree, not the "
            "installed package, and no quasar is installed: pip install -e "
            f"{os.path.basename(os.path.dirname(os.path.abspath(__file__)))} "
            "(or run Python from another folder)") from exc
    finally:
        sys.path[:] = saved


if __name__ == "quasar":
    sys.modules[__name__] = _installed_quasar()
