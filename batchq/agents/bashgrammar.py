"""Judge a bash command line against the shell allow-list on a real bash parse tree.

A subtask's ``execution.command`` and ``execution.verify`` are written by an
orchestrator, often an LLM, so they are untrusted. The allow-list holds
:func:`fnmatch.fnmatchcase` patterns such as ``'echo *'``. A hand-written splitter
that cut the line at ``;``/``&&``/``|`` was bypassed again and again (``$'\\''``
quoting it did not know, ``${x:- #}`` hiding a ``;`` from it, a carriage return it
read as a blank, a function redefining ``echo``…), because every bash feature it
did not model was *allowed by default*.

This module inverts that: the line is parsed with tree-sitter-bash and **every node
of the tree must be of a kind on an explicit allow-list**; anything else — a
construct we do not model, a parse error, a token we did not expect — is refused,
naming the construct. What is allowed is the part of bash whose meaning is fully
visible in the text:

* statements separated by ``;`` or newlines, ``&&``/``||`` lists and ``|``/``|&``
  pipelines of *simple commands* (no ``&`` background, no ``!``, no subshells,
  groups, functions, loops, ``if``/``case``, ``[[ ]]`` or declarations);
* words, single-quoted strings, double-quoted strings and numbers;
* ``$NAME`` and ``${NAME}`` (also inside double quotes) with no operator at all:
  expanding a plain parameter substitutes its value as data, word splitting and
  globbing included, but never evaluates it — unlike ``${x:-…}``, ``${x@P}``,
  ``${!x}``, ``${x[i]}``, ``$[…]``/``$((…))``, ``$(…)``, backticks and ``<(…)``,
  which are all refused;
* leading ``NAME=literal`` assignments, except to ``PATH``, ``LD_*``, ``PYTHON*``,
  ``BASH_ENV``, ``ENV``, ``BASH_FUNC_*``, ``SHELLOPTS``, ``BASHOPTS`` or ``IFS`` in
  any case (a bare assignment, which would outlive its command, is refused);
* file redirections ``<``, ``>``, ``>>``, ``>|``, ``&>``, ``&>>``, ``>&``, ``<&``
  with an optional numeric descriptor (here-documents and here-strings are refused);
* comments.

Tree-sitter is not bash, so the text of each leaf is checked again by hand where the
two could disagree, and characters they read differently are refused outright: a
carriage return, vertical tab or form feed is a blank to tree-sitter but part of a
word to bash (``echo hi<CR>#;touch X`` runs ``touch``), so every control character
but tab and newline is refused, and so is a backslash-newline (tree-sitter splits
``ec\\<newline>ho`` into two words, bash joins them into ``echo``). Text between
tokens must be blanks (tree-sitter silently skips the ``\\ `` of ``echo \\ a``), two
words must not touch (tree-sitter splits ``''\\,x`` in two, bash reads one word),
``{name}>file`` (bash assigns ``name``) and reserved words as command names
(``time``, ``coproc``…) are refused, and a command name or assignment value must be
literal text, not even ``$NAME``.

Each simple command, without its leading assignments but with its redirections (so
``'echo *'`` allows ``echo hi > out.txt``; a redirection before the command name
stays at the start of the text), must match one pattern; the text is the source as
written, quotes and all, so ``'echo *'`` does not allow ``'ech'o hi``. The allow-list is a
guardrail against mistakes and casual injection, not a sandbox: an allowed
``python *`` or ``bash *`` runs anything, and so do builtins that evaluate their
arguments (``eval``, ``source``, ``let``, ``test -v 'a[$(…)]'``…) when a pattern
allows them.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import tree_sitter
import tree_sitter_bash

from batchq.errors import PolicyError

__all__ = ["check_env_value", "check_line", "forbidden_env_name", "simple_argv"]

_EXACT_FORBIDDEN = frozenset({"PATH", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "IFS"})
_PREFIX_FORBIDDEN = ("LD_", "PYTHON", "BASH_FUNC_")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Every control character but tab and newline: bash reads \r, \v, \f as word characters
# where tree-sitter reads them as blanks, and NUL cannot reach bash at all.
_BAD_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\\\n")

_STATEMENT = frozenset({"command", "redirected_statement", "list", "pipeline"})
_ASSIGNMENT_VALUE = frozenset({"word", "string", "raw_string", "number", "concatenation"})

# Named node kinds that may appear anywhere a walk can reach them; their place in the
# tree is then checked by the rules in _Walk.
_NAMED = frozenset(
    {
        "program",
        "list",
        "pipeline",
        "redirected_statement",
        "command",
        "command_name",
        "variable_assignment",
        "variable_name",
        "special_variable_name",
        "word",
        "number",
        "string",
        "string_content",
        "raw_string",
        "concatenation",
        "simple_expansion",
        "expansion",
        "file_redirect",
        "file_descriptor",
        "comment",
    }
)

# Anonymous tokens (operators, quotes) allowed as children of each node kind.
_ANONYMOUS: dict[str, frozenset[str]] = {
    "program": frozenset({";"}),
    "list": frozenset({"&&", "||"}),
    "pipeline": frozenset({"|", "|&"}),
    "string": frozenset({'"'}),
    "simple_expansion": frozenset({"$"}),
    "expansion": frozenset({"${", "}"}),
    "variable_assignment": frozenset({"=", "+="}),
    "file_redirect": frozenset({"<", ">", ">>", ">|", "&>", "&>>", ">&", "<&", ">&-", "<&-"}),
}

_CONSTRUCTS = {
    "function_definition": "a function definition",
    "subshell": "a subshell (...)",
    "compound_statement": "a command group { ...; }",
    "if_statement": "an if statement",
    "for_statement": "a for loop",
    "c_style_for_statement": "a for (( )) loop",
    "while_statement": "a while/until loop",
    "case_statement": "a case statement",
    "command_substitution": "command substitution",
    "process_substitution": "process substitution",
    "arithmetic_expansion": "arithmetic expansion",
    "subscript": "an array subscript",
    "array": "an array",
    "ansi_c_string": "an ANSI-C string $'...'",
    "translated_string": 'a translated string $"..."',
    "heredoc_redirect": "a here-document",
    "herestring_redirect": "a here-string",
    "test_command": "a test command [[ ]]",
    "negated_command": "a negated command !",
    "declaration_command": "a declaration (declare/export/local/readonly/typeset)",
    "unset_command": "unset",
    "variable_assignments": "a bare assignment",
    "brace_expression": "a brace expression",
    "extglob_pattern": "an extended glob",
}

_RESERVED = frozenset(
    {
        "!",
        "[[",
        "]]",
        "{",
        "}",
        "case",
        "coproc",
        "do",
        "done",
        "elif",
        "else",
        "esac",
        "fi",
        "for",
        "function",
        "if",
        "in",
        "select",
        "then",
        "time",
        "until",
        "while",
    }
)

# bash's builtins (``compgen -b`` of bash 5): run as an argv, the program of the same
# name (if any) would run instead, with its own semantics (``exit``, ``cd`` have none).
_BUILTINS = frozenset(
    [
        ".",
        ":",
        "[",
        "alias",
        "bg",
        "bind",
        "break",
        "builtin",
        "caller",
        "cd",
        "command",
        "compgen",
        "complete",
        "compopt",
        "continue",
        "declare",
        "dirs",
        "disown",
        "echo",
        "enable",
        "eval",
        "exec",
        "exit",
        "export",
        "false",
        "fc",
        "fg",
        "getopts",
        "hash",
        "help",
        "history",
        "jobs",
        "kill",
        "let",
        "local",
        "logout",
        "mapfile",
        "popd",
        "printf",
        "pushd",
        "pwd",
        "read",
        "readarray",
        "readonly",
        "return",
        "set",
        "shift",
        "shopt",
        "source",
        "suspend",
        "test",
        "times",
        "trap",
        "true",
        "type",
        "typeset",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "wait",
    ]
)

# Characters that, left in a word tree-sitter calls plain after its escapes are
# removed, mean bash would read the word differently (quote, expansion, operator).
_WORD_SPECIAL = re.compile(r"""[$`'"()<>|&;\s]""")
_STRING_SPECIAL = re.compile(r'[$`"]')
_ESCAPED = re.compile(r"\\.", re.DOTALL)
# Unquoted characters bash expands (globs, braces, tilde): simple_argv gives up on them.
_UNQUOTED_EXPANDING = re.compile(r"[*?\[{}~]")
_DOUBLE_QUOTE_ESCAPE = re.compile(r'\\([$`"\\])')


class _Refused(Exception):
    """Why a line is refused, before the subtask and field are put in front."""


@dataclass(frozen=True)
class _Command:
    """One simple command: the text the patterns judge and the names it assigns."""

    text: str
    """The command without its leading assignments, redirections included."""
    whole: str
    """The command with its leading assignments, for messages."""
    assignments: tuple[str, ...]


def forbidden_env_name(name: str) -> bool:
    """True for a variable no subtask may set: it would change what program runs."""
    upper = name.upper()
    return upper in _EXACT_FORBIDDEN or upper.startswith(_PREFIX_FORBIDDEN)


@functools.cache
def _language() -> tree_sitter.Language:
    """The bash grammar, built once per process: loading it is the costly part."""
    return tree_sitter.Language(tree_sitter_bash.language())


_PARSERS = threading.local()


def _parser() -> tree_sitter.Parser:
    """A parser per thread (a parser keeps state while parsing); each is cheap."""
    parser: tree_sitter.Parser | None = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = tree_sitter.Parser(_language())
        _PARSERS.parser = parser
    return parser


def _show(text: str, limit: int = 60) -> str:
    """``text`` quoted for a one-line message, cut when long."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return repr(text)


class _Walk:
    """A pre-order walk of the whole parse tree that refuses every node it was not
    told about and collects the simple commands; iterative, so a deeply nested line
    cannot exhaust Python's stack."""

    def __init__(self, source: bytes) -> None:
        self.source = source
        self.commands: list[_Command] = []

    def text(self, node: tree_sitter.Node) -> str:
        return self.source[node.start_byte : node.end_byte].decode("utf-8")

    def run(self, root: tree_sitter.Node) -> list[_Command]:
        # (node, literal): literal is True under a command name or an assignment
        # value, where even a plain $NAME is refused.
        stack: list[tuple[tree_sitter.Node, bool]] = [(root, False)]
        covered = 0  # the end of the last leaf: leaves come in source order
        while stack:
            node, literal = stack.pop()
            self.visit(node, literal)
            if node.child_count == 0:
                self.check_gap(covered, node.start_byte)
                covered = node.end_byte
            literal = literal or node.type in ("command_name", "variable_assignment")
            stack.extend((child, literal) for child in reversed(node.children))
        self.check_gap(covered, len(self.source))
        return self.commands

    def check_gap(self, start: int, end: int) -> None:
        """Refuse text between two tokens that is not blanks: tree-sitter skips some
        text bash reads (an escaped blank at the start of a word, ``\\ a``)."""
        gap = self.source[start:end]
        if gap.strip(b" \t\n"):
            raise _Refused(
                f"the text {_show(gap.decode('utf-8', 'replace'))} is not understood "
                "by the checker and is refused"
            )

    def visit(self, node: tree_sitter.Node, literal: bool) -> None:
        kind = node.type
        parent = node.parent
        if node.is_missing:
            raise _Refused(f"is incomplete (bash expects {kind!r} at the end)")
        if kind == "ERROR":
            raise _Refused(f"cannot be parsed as bash near {_show(self.text(node))}")
        if not node.is_named:
            allowed = _ANONYMOUS.get(parent.type if parent else "", frozenset())
            if kind not in allowed:
                what = "a background '&'" if kind == "&" else f"the token {kind!r}"
                if kind == "$":
                    what = "a bare '$' (or a translated string $\"...\")"
                raise _Refused(f"{what} is refused")
            return
        if kind not in _NAMED:
            construct = _CONSTRUCTS.get(kind, kind.replace("_", " "))
            raise _Refused(f"{construct} {_show(self.text(node))} is refused")
        check = getattr(self, "check_" + kind, None)
        if check is not None:
            check(node, literal)

    def refuse_expansion(self, node: tree_sitter.Node, literal: bool) -> None:
        if literal:
            raise _Refused(
                f"the expansion {_show(self.text(node))} is refused in a command name "
                "or an assignment value (only literal text is allowed there)"
            )

    def check_simple_expansion(self, node: tree_sitter.Node, literal: bool) -> None:
        self.refuse_expansion(node, literal)

    def check_expansion(self, node: tree_sitter.Node, literal: bool) -> None:
        self.refuse_expansion(node, literal)
        shape = [child.type for child in node.children]
        if len(shape) != 3 or shape[1] not in ("variable_name", "special_variable_name"):
            raise _Refused(
                f"the parameter expansion {_show(self.text(node))} is refused "
                "(only ${NAME} without an operator is allowed)"
            )

    def check_word(self, node: tree_sitter.Node, literal: bool) -> None:
        rest = _ESCAPED.sub("", self.text(node))
        if _WORD_SPECIAL.search(rest):
            raise _Refused(f"the word {_show(self.text(node))} is ambiguous and refused")

    def check_raw_string(self, node: tree_sitter.Node, literal: bool) -> None:
        text = self.text(node)
        if len(text) < 2 or text[0] != "'" or text[-1] != "'" or "'" in text[1:-1]:
            raise _Refused(f"the quoted string {_show(text)} is ambiguous and refused")

    def check_string_content(self, node: tree_sitter.Node, literal: bool) -> None:
        if _STRING_SPECIAL.search(_ESCAPED.sub("", self.text(node))):
            raise _Refused(f"the quoted text {_show(self.text(node))} is ambiguous and refused")

    def check_comment(self, node: tree_sitter.Node, literal: bool) -> None:
        # bash starts a comment only where a word could start; elsewhere '#' is text.
        before = self.source[node.start_byte - 1 : node.start_byte] if node.start_byte else b""
        if not self.text(node).startswith("#") or before not in (b"", b" ", b"\t", b"\n", b";"):
            raise _Refused(f"the comment {_show(self.text(node))} is ambiguous and refused")

    def check_file_descriptor(self, node: tree_sitter.Node, literal: bool) -> None:
        if not self.text(node).isdigit():
            raise _Refused(f"the file descriptor {_show(self.text(node))} is refused")

    def check_file_redirect(self, node: tree_sitter.Node, literal: bool) -> None:
        # {name}>file makes bash assign a descriptor to the variable name; tree-sitter
        # reads {name} as an argument.
        self.check_boundaries(node)
        before = self.source[node.start_byte - 1 : node.start_byte] if node.start_byte else b""
        if before == b"}":
            raise _Refused(
                f"the redirection {_show(self.text(node))} after '}}' is refused "
                "({name}>file assigns a variable)"
            )

    def check_boundaries(self, node: tree_sitter.Node) -> None:
        """Refuse two words of ``node`` with nothing between them: bash reads them as
        one word where tree-sitter splits them (``''\\,x``, ``]\\]``)."""
        previous: tree_sitter.Node | None = None
        for child in node.named_children:
            if child.type in ("file_redirect", "file_descriptor", "comment"):
                continue
            if previous is not None and previous.end_byte == child.start_byte:
                raise _Refused(
                    f"the words {_show(self.text(previous))} and {_show(self.text(child))} "
                    "touch, so bash could read them as one; refused"
                )
            previous = child

    def check_variable_assignment(self, node: tree_sitter.Node, literal: bool) -> None:
        parent = node.parent
        if parent is None or parent.type != "command":
            raise _Refused(
                f"the bare assignment {_show(self.text(node))} is refused "
                "(an assignment may only prefix an allowed command)"
            )
        value = node.child_by_field_name("value")
        if value is not None and value.type not in _ASSIGNMENT_VALUE:
            raise _Refused(f"the assignment {_show(self.text(node))} is refused")

    def check_redirected_statement(self, node: tree_sitter.Node, literal: bool) -> None:
        # tree-sitter-bash hangs a trailing redirection of ``a && b >out`` on the whole
        # list (bash gives it to ``b`` alone): see _Walk.command_end.
        body = node.child_by_field_name("body")
        if body is None or body.type not in _STATEMENT:
            raise _Refused(
                f"{_show(self.text(node))} is refused (a redirection must belong to a command)"
            )

    def check_command(self, node: tree_sitter.Node, literal: bool) -> None:
        parent = node.parent
        if parent is None or parent.type not in (
            "program",
            "list",
            "pipeline",
            "redirected_statement",
        ):
            raise _Refused(f"the command {_show(self.text(node))} is in a refused place")
        self.check_boundaries(node)
        names: list[str] = []
        start: int | None = None
        has_name = False
        for child in node.children:
            if child.type == "variable_assignment" and not has_name:
                name = child.child_by_field_name("name")
                if name is not None:
                    names.append(self.text(name))
                continue
            if start is None:
                start = child.start_byte
            if child.type == "command_name":
                has_name = True
                word = self.text(child)
                if word in _RESERVED:
                    raise _Refused(f"the bash reserved word {word!r} is refused as a command")
        if not has_name or start is None:
            raise _Refused(f"{_show(self.text(node))} has no command name and is refused")
        end = self.command_end(node)
        self.commands.append(
            _Command(
                self.source[start:end].decode("utf-8"),
                self.source[node.start_byte : end].decode("utf-8"),
                tuple(names),
            )
        )

    @staticmethod
    def command_end(node: tree_sitter.Node) -> int:
        """Where the command ``node`` ends for bash: after the redirections that
        follow it, also those tree-sitter hangs on a list or pipeline it ends."""
        end = node.end_byte
        current = node
        parent = node.parent
        while parent is not None and parent.type in _STATEMENT:
            if parent.type == "redirected_statement":
                end = parent.end_byte
            elif current.end_byte != parent.end_byte:
                break
            current, parent = parent, parent.parent
        return end


def _parse(line: str) -> tuple[bytes, tree_sitter.Node]:
    """The line's UTF-8 bytes and parse tree; refused if it cannot be encoded."""
    try:
        source = line.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Refused("is not valid UTF-8 text") from exc
    return source, _parser().parse(source).root_node


def _analyse(line: str) -> tuple[bytes, tree_sitter.Node, list[_Command]]:
    """The source, parse tree and simple commands of ``line``, or :class:`_Refused`
    naming the first thing in it that is not allowed."""
    bad = _BAD_CHARACTER.search(line)
    if bad is not None:
        what = "a backslash-newline" if bad.group() == "\\\n" else repr(bad.group())
        raise _Refused(f"contains {what}, which bash and the checker could read differently")
    source, root = _parse(line)
    return source, root, _Walk(source).run(root)


def _patterns_text(patterns: Sequence[str]) -> str:
    if not patterns:
        return "none; set BATCHQ_SHELL_ALLOW or [agents.shell] allow in batchq.toml"
    return ", ".join(repr(p) for p in patterns)


def check_line(seq: str, field_name: str, line: str, patterns: Sequence[str]) -> None:
    """Raise :class:`PolicyError` unless every node of ``line``'s parse tree is of an
    allowed kind and every simple command matches one of ``patterns``.

    The message is one line naming the subtask, the field, the offending part and the
    patterns, so an orchestrator can show it as is. ``["*"]`` allows any line but one
    holding a NUL byte (which cannot reach bash)."""
    where = f"subtask {seq}: {field_name}"
    allowed = f"(patterns: {_patterns_text(patterns)})"
    if not line.strip():
        raise PolicyError(seq, f"{where}: is empty; expected a bash command line")
    try:
        if list(patterns) == ["*"]:
            # Everything is allowed: bash itself judges the syntax (tree-sitter may
            # not parse every valid line). Only a NUL byte can never reach bash.
            if "\x00" in line:
                raise _Refused("contains a NUL byte")
            return
        _source, _root, commands = _analyse(line)
    except _Refused as exc:
        raise PolicyError(seq, f"{where}: {exc} {allowed}") from None
    for command in commands:
        bad = next((name for name in command.assignments if forbidden_env_name(name)), None)
        if bad is not None:
            raise PolicyError(
                seq, f"{where}: {_show(command.whole)} sets {bad}, which a subtask may not change"
            )
        if not any(fnmatch.fnmatchcase(command.text, pattern) for pattern in patterns):
            raise PolicyError(
                seq,
                f"{where}: {_show(command.text)} is not allowed by the shell allow-list {allowed}",
            )


def _unquote(node: tree_sitter.Node, source: bytes) -> str | None:
    """The text bash makes of one literal word node, or None when bash would expand it
    (an unquoted glob, brace or tilde) or it is not a plain literal."""
    text = source[node.start_byte : node.end_byte].decode("utf-8")
    kind = node.type
    if kind == "raw_string":
        return text[1:-1]
    if kind == "string":
        if any(child.type not in ('"', "string_content") for child in node.children):
            return None
        return _DOUBLE_QUOTE_ESCAPE.sub(r"\1", text[1:-1])
    if kind in ("word", "number"):
        if _UNQUOTED_EXPANDING.search(_ESCAPED.sub("", text)):
            return None
        return _ESCAPED.sub(lambda m: m.group()[1], text)
    if kind == "concatenation":
        parts = [_unquote(child, source) for child in node.children]
        return None if any(part is None for part in parts) else "".join(map(str, parts))
    return None


def simple_argv(line: str) -> list[str] | None:
    """The argv of ``line`` when it is exactly one simple command of literal words —
    no redirection, expansion, assignment, comment, glob, brace or tilde — with the
    quotes removed as bash removes them, so the caller can run it without a shell;
    None otherwise (and for anything :func:`check_line` would refuse as a construct).

    A command naming a bash builtin (``echo``, ``exit``, ``cd``…) gives None: without
    a shell the program of that name, if any, would run instead of the builtin."""
    try:
        source, root, commands = _analyse(line)
    except _Refused:
        return None
    if len(commands) != 1 or root.named_child_count != 1:
        return None
    command = root.named_children[0]
    if command.type != "command":
        return None
    argv: list[str] = []
    for child in command.named_children:
        node = child.named_children[0] if child.type == "command_name" else child
        word = _unquote(node, source)
        if word is None:
            return None
        argv.append(word)
    return None if argv[0] in _BUILTINS else argv


def check_env_value(seq: str, name: str, value: str) -> None:
    """Raise :class:`PolicyError` unless ``name=value`` is a safe ``execution.env``
    entry: ``name`` a plain variable name not in the forbidden set, ``value`` free of
    NUL bytes (which cannot be passed through the environment).

    The value itself is data: bash never evaluates the value of a variable it
    inherits from its environment, except an exported function
    (``BASH_FUNC_name%%``), whose names are forbidden. A value such as
    ``a[$(touch X)]`` is only evaluated when an arithmetic context dereferences it
    (``$((X))``, ``$[X]``, ``${a[X]}``, ``[[ X -eq 1 ]]``, ``let``…), and the grammar
    of :func:`check_line` refuses every such construct — a pattern that allows a
    builtin evaluating its arguments (``let *``, ``test *``) allows it anyway."""
    where = f"subtask {seq}: execution.env"
    if not _ENV_NAME.fullmatch(name):
        raise PolicyError(
            seq, f"{where}: {_show(name)} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"
        )
    if forbidden_env_name(name):
        raise PolicyError(
            seq,
            f"{where}: may not set {name} "
            "(PATH, LD_*, PYTHON* and bash start-up variables are refused)",
        )
    if "\x00" in value:
        raise PolicyError(seq, f"{where}: the value of {name} contains a NUL byte")
