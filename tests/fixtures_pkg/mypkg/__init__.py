"""A package on the allow-list whose namespace also holds code from elsewhere:
``os``, ``subprocess``, a sibling module and a function imported by name."""

from __future__ import annotations

import os
import subprocess
from subprocess import getoutput as imported_function

from .. import helper_mod

__all__ = ["Steps", "helper_mod", "imported_function", "os", "own", "subprocess"]


def own(subtask: object, context: str) -> str:
    return "mypkg.own ran"


class Steps:
    @staticmethod
    def nested(subtask: object, context: str) -> str:
        return "mypkg.Steps.nested ran"
