"""``python -m batchq``: the same as the ``batchq`` command."""

from batchq.cli import main

main()
