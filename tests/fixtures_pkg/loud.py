"""A module whose import is observable: the allow-list must refuse it before importing."""

IMPORTED = True


def run(subtask: object, context: str) -> str:
    return "should never run"
