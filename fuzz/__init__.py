"""Coverage-guided fuzzing of mbx's parsers of untrusted input (atheris).

``fuzz.targets`` holds the targets, ``fuzz.run`` runs them time-bounded
(``make fuzz``), ``fuzz.worker`` is one target's fuzzing process.  The
corpus of each target lives in the tree, in ``fuzz/corpus/<target>/``: the
seeds, the inputs that found a bug, and inputs that reached new code.
docs/reliability.md says what the targets cover and what they found.

This package's __init__ imports nothing: the worker must import the code
under test inside atheris's instrumentation.
"""

import os

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
