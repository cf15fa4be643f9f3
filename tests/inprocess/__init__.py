"""The in-process lane (see ``conftest.py``). This file makes the folder a package so
its ``scope="package"`` worker stops when the lane's last test is done: pytest treats a
package-scoped fixture of a plain folder as session-scoped, and an in-process worker
still consuming batchq's queues would steal the messages of the subprocess workers
that ``tests/integration`` starts on the same Redis later in a ``make test`` session."""
