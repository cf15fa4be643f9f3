"""The orchestrating side: a feature run batch after batch (or in flow mode), the
producer that submits a batch and waits for its report, and the file mirror."""
