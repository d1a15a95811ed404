"""Short command-line errors: what ``dck`` prints for a misspelt key, a wrong type or a bad choice.

jsonargparse reports a bad argument with the whole usage text and, for a key inside a class
(``--model.init_args.backbone.init_args.dck``), the nested Union errors of every class it
tried. :class:`DCKArgumentParser` overrides :meth:`ArgumentParser.error` (the one place every
parsing error goes through) to print at most four lines instead::

    dck: error: unknown key --trainer.max_epoch (on the command line)
      did you mean: --trainer.max_epochs
      see: dck fit --help

:func:`explain` reads jsonargparse's message (a tree of ``Parser key "…":`` and ``Problem
with given class_path '…':`` levels above one leaf: an unknown option, an invalid choice, a
wrong type), follows the branch of the class the user gave, and suggests the nearest valid
keys or choices (:func:`difflib.get_close_matches`). Abbreviated keys are not accepted
(``allow_abbrev=False``): ``--trainer.max_epoch`` is an error, not ``max_epochs``.
``DCK_DEBUG=1`` (or ``JSONARGPARSE_DEBUG=1``) keeps jsonargparse's own report.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import os
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from jsonargparse import ArgumentParser
from pytorch_lightning.cli import LightningArgumentParser

__all__ = ["DCKArgumentParser", "Problem", "explain", "find_problem"]

#: Union alternatives that are never what the user meant (``Optional[X]``'s ``None``, the other
#: protocol a backbone may follow, a config-file path where a value was given).
_OTHER_BRANCHES = (
    "Expected a <class 'NoneType'>",
    "to be a subclass of",
    "Expected a path but",
    "Expected a dot import path string",
)
_PARSER_KEY = re.compile(r'Parser key "(?P<key>[^"]+)":\s*(?P<body>.*)', re.S)
_CLASS_PATH = re.compile(r"Problem with given class_path '(?P<cls>[^']+)':\s*(?P<body>.*)", re.S)
_CALLABLE = re.compile(r"Type \S.*? expects a function or a callable class: (?P<body>.*)", re.S)
_GOT_NAMESPACE = re.compile(r"\.? ?Got value: Namespace\(class_path='(?P<cls>[^']+)'.*$", re.S)
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.*)", re.S)
_NOT_ACCEPTED = re.compile(r"(?:Option|does not accept option) '(?P<key>[^']+)'")
_LITERAL = re.compile(
    r"Expected a typing\.Literal\[(?P<choices>.*?)\]\. Got value: (?P<given>.*)", re.S
)
_TYPE = re.compile(r"Expected an? <class '(?P<type>[\w.]+)'>(?:\. Got value: (?P<given>.*))?", re.S)
_ARGPARSE_CHOICE = re.compile(
    r"argument (?P<key>\S+): invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)"
)
_REQUIRED = re.compile(r'Key "(?P<key>[^"]+)" is required')
_NO_CLASS = re.compile(r"module '[^']*' has no attribute|No module named")


@dataclass
class Problem:
    """What is wrong with one argument, as read from a jsonargparse error message.

    Attributes:
        key: the dotted config key (``model.init_args.backbone.init_args.dck``).
        kind: ``unknown`` (no such key), ``choice``, ``type``, ``value`` (not a valid class
            or value), ``required`` or ``other``.
        given: the value given, when the message has it.
        choices: the valid values (``choice``), or the expected types (``type``).
        level: the key of the class the unknown key was looked up in (``""``: the command).
        class_path: that class.
        text: the leaf message (``other``).
    """

    key: str
    kind: str
    given: Optional[str] = None
    choices: list[str] = field(default_factory=list)
    level: str = ""
    class_path: Optional[str] = None
    text: str = ""


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def _first_value(text: str) -> str:
    """``adaptve`` of ``adaptve. Got value: Namespace(...)``."""
    return text.split(". Got value:", 1)[0].strip()


def _items(body: str) -> tuple[list[str], dict[str, str]]:
    """The ``- …`` alternatives of a Union error (each with its indented lines) and its other
    ``Name: value`` lines (``Subtypes``, ``Given value``)."""
    lines = [line for line in body.splitlines() if line.strip()]
    bullets = [len(line) - len(line.lstrip()) for line in lines if line.lstrip().startswith("- ")]
    indent = min(bullets, default=0)
    items: list[list[str]] = []
    fields: dict[str, str] = {}
    for line in lines:
        depth, stripped = len(line) - len(line.lstrip()), line.strip()
        if depth == indent and stripped.startswith("- "):
            items.append([stripped[2:]])
        elif depth > indent and items:
            items[-1].append(line)
        elif ":" in stripped:
            name, _, value = stripped.partition(":")
            fields[name] = value.strip()
    return ["\n".join([i[0], textwrap.dedent("\n".join(i[1:]))]).strip() for i in items], fields


def _type_names(subtypes: str) -> list[str]:
    names = re.findall(r"<class '([\w.]+)'>", subtypes)
    return ["null" if n == "NoneType" else n.rsplit(".", 1)[-1] for n in names]


def find_problem(
    message: str, prefix: str = "", class_path: Optional[str] = None, given: Optional[str] = None
) -> Problem:
    """The :class:`Problem` a jsonargparse error ``message`` describes (see the module docstring).

    Args:
        message: the message, or one level of it.
        prefix: the dotted key of that level.
        class_path: the class of that level, when it is one.
        given: the value the enclosing Union reported.
    """
    text = message.strip()
    if text.startswith("error: "):
        text = text[len("error: ") :]
    if match := _PARSER_KEY.match(text):
        return find_problem(match["body"], _join(prefix, match["key"]), class_path, given)
    if match := _CLASS_PATH.match(text):
        return find_problem(match["body"], _join(prefix, "init_args"), match["cls"], given)
    if match := _CALLABLE.match(text):
        body = match["body"]
        found = _GOT_NAMESPACE.search(body)
        if found:
            body = body[: found.start()]
        cls = found["cls"] if found else class_path
        return find_problem(body, _join(prefix, "init_args"), cls, given)
    if text.startswith("- ") or text.startswith("Does not validate against any of the Union"):
        return _union_problem(text, prefix, class_path, given)
    return _leaf_problem(text, prefix, class_path, given)


def _union_problem(
    text: str, prefix: str, class_path: Optional[str], given: Optional[str]
) -> Problem:
    """Follow the alternative of a Union (or of a list of ``- …`` alternatives) the user meant."""
    body = text.split("Errors:", 1)[1] if "Errors:" in text.split("\n- ", 1)[0] else text
    items, fields = _items(body)
    given = fields.get("Given value", given)
    for item in items:
        if item.startswith("Does not validate against any of the Union"):
            nested = find_problem(item, prefix, class_path, given)
            if nested.kind != "value":
                return nested
            continue
        if not any(other in item.splitlines()[0] for other in _OTHER_BRANCHES):
            problem = find_problem(item, prefix, class_path, given)
            if problem.kind == "type":
                problem.choices = _type_names(fields.get("Subtypes", "")) or problem.choices
            return problem
    return Problem(prefix, "value", given=given, level=prefix, class_path=class_path)


def _leaf_problem(
    text: str, prefix: str, class_path: Optional[str], given: Optional[str]
) -> Problem:
    if match := _UNRECOGNIZED.match(text):
        first = match["args"].split()[0]
        key = first.lstrip("-").split("=", 1)[0]
        return Problem(_join(prefix, key), "unknown", level=prefix, class_path=class_path)
    if match := _NOT_ACCEPTED.search(text):
        return Problem(_join(prefix, match["key"]), "unknown", level=prefix, class_path=class_path)
    if match := _LITERAL.match(text):
        choices = [str(c) for c in ast.literal_eval(f"[{match['choices']}]")]
        return Problem(prefix, "choice", _first_value(match["given"]), choices)
    if match := _ARGPARSE_CHOICE.match(text):
        choices = [str(c) for c in ast.literal_eval(f"[{match['choices']}]")]
        return Problem(match["key"], "choice", match["given"], choices)
    if match := _TYPE.match(text):
        value = _first_value(match["given"]) if match["given"] else given
        return Problem(prefix, "type", value, [_type_names(f"<class '{match['type']}'>")[0]])
    if match := _REQUIRED.search(text):
        return Problem(_join(prefix, match["key"]), "required")
    if class_path and _NO_CLASS.match(text):  # --model dck_lightning.tasks.NoSuchTask
        return Problem(prefix.removesuffix(".init_args"), "value", given=class_path)
    return Problem(prefix, "other", given, text=text.splitlines()[0] if text else "")


# -- what the user can write instead -----------------------------------------------------------


def _flat_keys(namespace: Any) -> list[str]:
    """Every dotted key of a jsonargparse Namespace, and every prefix of one."""
    keys: set[str] = set()
    for key in namespace.keys():
        parts = key.split(".")
        keys.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(keys)


def class_keys(class_path: str) -> list[str]:
    """The init argument names of ``class_path`` as jsonargparse sees them (it follows
    ``super().__init__`` and ``**kwargs``); empty when the class cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        if inspect.isclass(target):
            parser.add_class_arguments(target, fail_untyped=False)
        else:
            parser.add_function_arguments(target, fail_untyped=False)
        return sorted({key.split(".")[0] for key in parser.get_defaults().keys()})
    except Exception:  # noqa: BLE001 - suggestions are a courtesy, never a second error
        return []


def command_keys(parser: ArgumentParser) -> list[str]:
    """The keys a (sub)command parser accepts."""
    try:
        return _flat_keys(parser.get_defaults())
    except Exception:  # noqa: BLE001 - as class_keys
        return [a.dest for a in parser._actions if a.option_strings]


def _nearest(word: str, candidates: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)


def _value_candidates(key: str) -> list[str]:
    """The names a class-valued key takes by one word: the tasks (``model``), the DataModules
    (``data``), the backbone presets (``…backbone``)."""
    from . import data, tasks
    from .models.registry import list_backbones

    def subclasses(module: Any, base: type) -> list[str]:
        return sorted(
            name
            for name in getattr(module, "__all__", [])
            if inspect.isclass(obj := getattr(module, name, None))
            and issubclass(obj, base)
            and obj is not base
        )

    if key == "model":
        return subclasses(tasks, tasks.BaseTask)
    if key == "data":
        return subclasses(data, data.BaseDataModule)
    if key.split(".")[-1] == "backbone":
        return list_backbones()
    return []


def _config_files(args: Sequence[str]) -> list[str]:
    files = []
    for index, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name in ("-c", "--config"):
            value = value or (args[index + 1] if index + 1 < len(args) else "")
            if Path(value).is_file():
                files.append(value)
    return files


def _config_has(path: str, key: str) -> bool:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def where(key: str, args: Sequence[str]) -> str:
    """`` (on the command line)`` or `` (in <config file>)`` when either names ``key``."""
    if any(a.split("=", 1)[0] == f"--{key}" for a in args):
        return " (on the command line)"
    for path in _config_files(args):
        if _config_has(path, key):
            return f" (in {path})"
    return ""


def explain(message: str, parser: ArgumentParser, args: Sequence[str] = ()) -> list[str]:
    """At most four lines for a parsing error: the key and what is wrong with it, the nearest
    valid keys or choices, and the help command to read (see the module docstring)."""
    problem = find_problem(message)
    command = parser.prog.replace(" [options]", "")
    key = problem.key
    lines: list[str]
    if problem.kind == "unknown":
        lines = [f"dck: error: unknown key --{key}{where(key, args)}"]
        suggestions = _suggest_keys(problem, parser)
        if suggestions:
            lines.append("  did you mean: " + ", ".join(f"--{s}" for s in suggestions))
        elif problem.class_path and class_keys(problem.class_path):
            lines.append(f"  {_class_name(problem)} takes: {_some(class_keys(problem.class_path))}")
    elif problem.kind == "choice" and key == "subcommand":  # dck fitt
        lines = [f"dck: error: no command {problem.given!r}; dck runs {', '.join(problem.choices)}"]
        nearest = _nearest(str(problem.given), problem.choices)
        if nearest:
            lines.append("  did you mean: " + ", ".join(f"dck {n}" for n in nearest))
    elif problem.kind == "choice":
        lines = [
            f"dck: error: --{key}: {problem.given!r} is not one of {', '.join(problem.choices)}"
        ]
        nearest = _nearest(str(problem.given), problem.choices)
        if nearest:
            lines.append("  did you mean: " + ", ".join(nearest))
    elif problem.kind == "type":
        lines = [
            f"dck: error: --{key}: expected {' or '.join(problem.choices)}, got {problem.given!r}"
        ]
    elif problem.kind == "value":
        lines = [f"dck: error: --{key}: invalid value {problem.given!r}"]
        names = _value_candidates(key)
        nearest = _nearest(str(problem.given).rsplit(".", 1)[-1], names)
        if nearest:
            lines.append("  did you mean: " + ", ".join(nearest))
        elif names:
            lines.append(f"  one of: {_some(names)}")
    elif problem.kind == "required":
        lines = [f"dck: error: --{key} is required"]
    else:
        lines = [f"dck: error: {'--' + key + ': ' if key else ''}{problem.text}"]
    lines.append(f"  see: {command} --help" + _class_help(problem, command))
    return lines


def _suggest_keys(problem: Problem, parser: ArgumentParser) -> list[str]:
    """The nearest valid keys to an unknown one: at its class's level, by the misspelt part."""
    if problem.class_path:
        rest = problem.key[len(problem.level) + 1 :] if problem.level else problem.key
        word, _, tail = rest.partition(".")
        nearest = _nearest(word, class_keys(problem.class_path))[: 1 if tail else 3]
        return [_join(_join(problem.level, name), tail) for name in nearest]
    return _nearest(problem.key, command_keys(parser))


def _class_name(problem: Problem) -> str:
    return str(problem.class_path).rsplit(".", 1)[-1]


def _some(names: Sequence[str], count: int = 8) -> str:
    """The first ``count`` names, and how many more there are."""
    more = f", … ({len(names) - count} more)" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def _class_help(problem: Problem, command: str) -> str:
    """``, dck fit --model.help ClassificationTask`` for a key inside a class."""
    if not problem.class_path or not problem.level.endswith(".init_args"):
        return ""
    owner = problem.level[: -len(".init_args")]
    return f" or {command} --{owner}.help {_class_name(problem)}"


class DCKArgumentParser(LightningArgumentParser):
    """LightningArgumentParser with short errors (:func:`explain`) and no abbreviated keys."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def add_subcommands(self, *args: Any, **kwargs: Any) -> Any:
        """jsonargparse's, kept as :attr:`subcommands_action` (``dck`` lists more commands)."""
        self.subcommands_action = super().add_subcommands(*args, **kwargs)
        return self.subcommands_action

    def parse_args(self, args: Optional[Sequence[str]] = None, *rest: Any, **kwargs: Any) -> Any:
        self._dck_args = list(sys.argv[1:] if args is None else args)
        return super().parse_args(args, *rest, **kwargs)

    def error(self, message: str, ex: Optional[Exception] = None) -> Any:
        """Print :func:`explain`'s lines and exit with status 2 (jsonargparse's report when it
        is not to exit, or with ``DCK_DEBUG`` or ``JSONARGPARSE_DEBUG`` set)."""
        debug = os.environ.get("DCK_DEBUG") or os.environ.get("JSONARGPARSE_DEBUG")
        if not self.exit_on_error or debug:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        args = getattr(self, "_dck_args", None) or sys.argv[1:]
        sys.stderr.write("\n".join(explain(message, parser, args)) + "\n")
        raise SystemExit(2)
