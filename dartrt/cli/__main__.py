"""``python -m dartrt.cli``: the same as the ``dartrt`` script."""

from . import run

run()
