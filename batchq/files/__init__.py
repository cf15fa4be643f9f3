"""The task files and the workspace on disk: loading and rewriting subtask files
(format-preserving JSON, the per-feature lock), fingerprints, workspace snapshots and
the one description of the on-disk layout (:mod:`batchq.files.layout`)."""
