"""``python -m batchq``: the same as the ``batchq`` command."""

from batchq.entry import main

main()
