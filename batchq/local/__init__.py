"""The stack on this machine: an embedded redis-server and local workers, the
``batchq up`` stack file, Flower's command line, and which Redis a command uses."""
