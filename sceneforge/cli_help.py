"""A verb's help that fits a screen: ``sceneforge VERB --help``.

tyro's own help (``sceneforge VERB --help-all``) lists every option of every nested config
with its whole docstring, design notes included: ``run --help`` was ~800 lines. This summary
walks the same dataclasses and prints the verb's own options and those of its first level of
sections one line each (the docstring's first sentence, truncated to the terminal, and the
default), and each deeper section as one line (``--train.trainer.*``, its first docstring
sentence and how many options it holds). Flag names follow tyro's rules: ``_`` -> ``-``, nested
fields prefixed ``section.``, flattened sections (``tyro.conf.arg(name="")``) unprefixed,
``OmitArgPrefixes`` sections by their leaf names, booleans as ``--x`` / ``--no-x``.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import inspect
import os
import re
import textwrap
import typing
from pathlib import Path

#: Left column width (flag and metavar) before the help text.
FLAG_WIDTH = 34


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring (the string literal right below the field) of a dataclass and
    its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (e.g. a compiled module): no help text
            continue
        node = ast.parse(src).body[0]
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for a, b in zip(body, body[1:]):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = inspect.cleandoc(b.value.value)
    return docs


def first_sentence(text: str | None) -> str:
    """The first sentence (up to ``. `` or the end) on one line, without rST backticks."""
    if not text:
        return ""
    one = " ".join(text.replace("``", "").replace(":attr:", "").split())
    m = re.search(r"(?<!\b[a-z]\.[a-z])\.(\s|$)", one)  # not "e.g. " / "i.e. "
    return one[: m.start() + 1] if m else one


def _markers(tp) -> tuple[object, tuple]:
    """``(type, metadata)`` of a possibly ``Annotated`` type."""
    if typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        return args[0], tuple(args[1:])
    return tp, ()


def _is_marker(meta: tuple, name: str) -> bool:
    import tyro

    marker = typing.get_args(getattr(tyro.conf, name)[int])[1]
    return any(m is marker for m in meta)


def _arg_name(meta: tuple) -> str | None:
    """The ``name`` of a ``tyro.conf.arg(...)`` in the metadata (None: not renamed)."""
    for m in meta:
        if type(m).__name__ == "_ArgConfig" and getattr(m, "name", None) is not None:
            return m.name
    return None


def _strip_optional(tp) -> tuple[object, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(args):
            return rest[0], True
    return tp, False


def metavar(tp) -> str:
    """A short metavar in tyro's style (``INT``, ``{a,b}``, ``FLOAT FLOAT``)."""
    tp, _ = _markers(tp)
    tp, _optional = _strip_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{metavar(args[0])} [...]"
        return " ".join(metavar(a) for a in args)
    if origin in (list, typing.Sequence, set):
        return f"{metavar(args[0]) if args else 'STR'} [...]"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "{" + ",".join(e.name for e in tp) + "}"
    if tp is bool:  # an optional bool (a plain one is a flag pair)
        return "{None,True,False}" if _optional else "{True,False}"
    names = {int: "INT", float: "FLOAT", str: "STR", Path: "PATH"}
    if tp in names:
        return names[tp]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return "|".join(metavar(a) for a in args if a is not type(None))
    return getattr(tp, "__name__", str(tp)).upper()


@dataclasses.dataclass
class Option:
    flag: str
    metavar: str
    help: str
    default: str | None


@dataclasses.dataclass
class Section:
    """A dataclass's options under one flag prefix."""

    prefix: str
    help: str
    options: list[Option] = dataclasses.field(default_factory=list)
    sections: list[Section] = dataclasses.field(default_factory=list)
    positionals: list[Option] = dataclasses.field(default_factory=list)

    def count(self) -> int:
        """Options in this section and every section below it."""
        return len(self.options) + sum(s.count() for s in self.sections)

    def flags(self) -> list[str]:
        """Every flag of the section and its sub-sections."""
        out = [f for o in self.options for f in o.flag.split(", ")]
        return out + [f for s in self.sections for f in s.flags()]


def _default_of(f: dataclasses.Field, instance) -> object:
    if instance is not None:
        return getattr(instance, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def build(cls: type, instance=None, prefix: str = "", help: str = "", omit: bool = False):
    """The :class:`Section` tree of dataclass ``cls`` (defaults from ``instance`` if given)."""
    sec = Section(prefix, help)
    hints = typing.get_type_hints(cls, include_extras=True)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, meta = _markers(hints[f.name])
        inner, optional = _strip_optional(tp)
        default = _default_of(f, instance)
        doc = docs.get(f.name, "")
        name = f.name.replace("_", "-")
        if _is_marker(meta, "Positional"):
            sec.positionals.append(Option(name.upper(), metavar(tp), first_sentence(doc), None))
            continue
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            renamed = _arg_name(meta)
            sub_omit = omit or _is_marker(meta, "OmitArgPrefixes")
            if renamed == "" or sub_omit:
                sub_prefix = prefix if not sub_omit else ""
            else:
                sub_prefix = f"{prefix}{renamed if renamed is not None else name}."
            sub_instance = default if dataclasses.is_dataclass(default) else None
            child = build(inner, sub_instance, sub_prefix, first_sentence(doc), sub_omit)
            if renamed == "" or sub_omit:  # flattened: its options belong to this section
                sec.options += child.options
                sec.sections += child.sections
                sec.positionals += child.positionals
            else:
                sec.sections.append(child)
            continue
        flag = f"--{prefix}{name}"
        shown = None if default is dataclasses.MISSING else default
        if inner is bool and not optional:  # tyro: a --x / --no-x pair
            no = f"--{prefix}no-{name}"
            sec.options.append(Option(f"{flag}, {no}", "", first_sentence(doc), str(shown)))
        else:
            text = "required" if default is dataclasses.MISSING else _fmt_default(shown)
            sec.options.append(Option(flag, metavar(tp), first_sentence(doc), text))
    return sec


def _fmt_default(value) -> str:
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value) or "()"
    if isinstance(value, enum.Enum):
        return value.name
    return str(value)


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters (ending in an ellipsis when cut)."""
    return text if len(text) <= width else text[: max(width - 1, 10)].rstrip() + "…"


def _line(left: str, right: str, width: int) -> str:
    left = f"  {left}"
    return _fit(f"{left:<{FLAG_WIDTH}}  {right}" if right else left, width)


def _option_line(o: Option, width: int) -> str:
    """One line (flag, help, default) when it fits, else the flag and default on one line and
    the help, truncated to the width, indented below it."""
    left = f"{o.flag} {o.metavar}".strip()
    tail = f" (default: {o.default})" if o.default is not None else ""
    one = f"  {left:<{FLAG_WIDTH}}  {o.help}{tail}"
    if len(one) <= width:
        return one.rstrip()
    head, body = _fit(f"  {left}{tail}", width), _fit(f"      {o.help}", width)
    return f"{head}\n{body}" if o.help else head


def format_help(prog: str, cls: type, description: str, width: int | None = None) -> str:
    """The one-screen help of command dataclass ``cls``."""
    width = width or _terminal_width()
    top = build(cls)
    pos = " ".join(p.flag for p in top.positionals)
    lines = [f"usage: {prog} [-h] [--help-all] [OPTIONS] {pos}".rstrip(), ""]
    lines += textwrap.wrap(" ".join(description.split()), width) + [""]
    if top.positionals:
        lines.append("positional arguments:")
        lines += [_line(p.flag, p.help, width) for p in top.positionals]
        lines.append("")
    lines.append("options:")
    lines.append(_line("-h, --help", "this summary", width))
    lines.append(_line("--help-all", "every option, with its full notes", width))
    lines += [_option_line(o, width) for o in top.options]
    for s in top.sections:
        lines += ["", _fit(f"{s.prefix.rstrip('.')} options: {s.help}".rstrip(), width)]
        lines += [_option_line(o, width) for o in s.options]
        for sub in s.sections:
            n = f" ({sub.count()} option{'s' if sub.count() != 1 else ''})"
            lines.append(_option_line(Option(f"--{sub.prefix}*", "", sub.help + n, None), width))
    deep = [sub for s in top.sections for sub in s.sections]
    if deep or top.sections:
        note = f"Sections shown as --NAME.*: `{prog} --help-all` lists their options."
        lines += [""] + textwrap.wrap(note, width)
    return "\n".join(lines)


def _terminal_width() -> int:
    try:
        cols = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        cols = 0
    if cols <= 0:
        import shutil

        cols = shutil.get_terminal_size((100, 24)).columns
    return max(60, min(cols, 120))


__all__ = ["Option", "Section", "build", "field_docs", "first_sentence", "format_help"]
