"""Make ``lti_helpers`` (shared random systems and plain references) importable from the lti tests.

The project runs pytest with ``--import-mode=importlib``, which does not put test directories on
``sys.path``; this directory is added here so that ``from lti_helpers import ...`` works in any
import mode.
"""
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
