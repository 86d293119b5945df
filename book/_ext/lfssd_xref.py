"""Sphinx extension for the API reference of ``lfssd_tutorial``.

1. Resolve re-exported names to their documentation.

The API reference documents every object where it is defined (``lfssd_tutorial.importance.
compute_importance``), while readers and docstrings use the short, re-exported names
(``lfssd_tutorial.compute_importance``). When a Python cross-reference is not found, this
imports the name, finds the module that defines it and links there. A name that cannot be
imported, or whose definition is not documented, stays a missing reference (and fails the
strict build).

2. Split docstring entries that describe several attributes at once. Napoleon turns
``Attributes: train, test: datasets ...`` into one ``.. attribute:: train, test`` entry
(or ``:ivar train, test:``, which Sphinx would read as a type and a name); each name gets
its own entry instead, so that ``:attr:`` references to either resolve.

For a dataclass, autodoc documents every field itself, so its ``Attributes:`` stay
``:ivar:`` fields (no duplicate entries). For any other class, whose attributes are
assigned in ``__init__`` and invisible to autodoc, each ``:ivar name:`` becomes an
``.. attribute:: name`` entry, the target of ``:attr:`name``` references.

3. Keep one-line docstrings of module constants as written. Napoleon reads
``#: Name -> function (see: ...)`` as ``type: description`` and turns the text before the
colon into a type; when the "type" is not a type expression the original text is kept.
"""

from __future__ import annotations

import dataclasses
import importlib
import re

PACKAGE = "lfssd_tutorial"


def _import(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _canonical(dotted: str) -> str | None:
    obj = _import(dotted)
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or not module.startswith(PACKAGE):
        return None
    return f"{module}.{qualname}"


def resolve(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    candidates = [target]
    module = node.get("py:module")
    if module and not target.startswith(PACKAGE):
        candidates.insert(0, f"{module}.{target}")
    domain = env.get_domain("py")
    for candidate in candidates:
        if not candidate.startswith(PACKAGE + "."):
            continue
        canonical = _canonical(candidate)
        if canonical and canonical != candidate and canonical in domain.objects:
            new = node.deepcopy()
            new["reftarget"] = canonical
            new["py:module"] = None
            new["refspecific"] = False
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], canonical, new, contnode)
    # A bare name from a type hint (e.g. "Evaluator"): link it if exactly one documented
    # object of the package has that name.
    if "." not in target:
        matches = [full for full in domain.objects if full.startswith(PACKAGE + ".") and full.rsplit(".", 1)[-1] == target]
        if len(matches) == 1:
            new = node.deepcopy()
            new["reftarget"] = matches[0]
            new["py:module"] = None
            new["refspecific"] = False
            return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", matches[0], new, contnode)
    return None


_IVAR = re.compile(r"^(\s*):ivar ([\w]+(?:\s*,\s*[\w]+)+):(.*)$")
_ATTRIBUTE = re.compile(r"^(\s*)\.\. attribute:: ([\w]+(?:\s*,\s*[\w]+)+)\s*$")
_TYPE_EXPRESSION = re.compile(r"^[\w.\[\], |~`:()]*$")
_ORIGINAL: dict[str, list[str]] = {}


def _split_fields(lines: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        m_ivar, m_attr = _IVAR.match(line), _ATTRIBUTE.match(line)
        if m_ivar:
            indent, names, text = m_ivar.groups()
            out.extend(f"{indent}:ivar {n.strip()}:{text}" for n in names.split(","))
            i += 1
        elif m_attr:
            indent, names = m_attr.groups()
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > len(indent)):
                j += 1
            body = lines[i + 1 : j]
            for n in names.split(","):
                out.append(f"{indent}.. attribute:: {n.strip()}")
                out.extend(body)
            i = j
        else:
            out.append(line)
            i += 1
    return out


_IVAR_ONE = re.compile(r"^(\s*):ivar (\w+):\s*(.*)$")


def _ivars_to_attributes(lines: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(lines):
        m = _IVAR_ONE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, name, text = m.groups()
        body = [text]
        j = i + 1
        while j < len(lines) and lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) > len(indent):
            body.append(lines[j].strip())
            j += 1
        out.extend([f"{indent}.. attribute:: {name}", ""] + [f"{indent}   {b}" for b in body] + [""])
        i = j
    return out


def remember_docstring(app, what, name, obj, options, lines):
    if what in ("data", "attribute"):
        _ORIGINAL[name] = list(lines)


def fix_docstring(app, what, name, obj, options, lines):
    original = _ORIGINAL.pop(name, None)
    if original is not None:
        for line in lines:
            if line.strip().startswith(":type:"):
                expression = line.split(":type:", 1)[1].strip()
                if not _TYPE_EXPRESSION.match(expression) or " " in expression.replace(", ", ",").replace(" | ", "|"):
                    lines[:] = original
                    return
    lines[:] = _split_fields(lines)
    if what == "class" and isinstance(obj, type) and not dataclasses.is_dataclass(obj):
        lines[:] = _ivars_to_attributes(lines)


def setup(app):
    app.setup_extension("sphinx.ext.napoleon")
    app.connect("missing-reference", resolve)
    # around napoleon (priority 500), which turns "Attributes:" into attribute entries
    app.connect("autodoc-process-docstring", remember_docstring, priority=400)
    app.connect("autodoc-process-docstring", fix_docstring, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
