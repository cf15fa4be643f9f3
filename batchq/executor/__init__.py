"""What a worker does with one subtask: claim it, run its agent inside a write window,
verify its deliverables, log, and record the result exactly once."""
