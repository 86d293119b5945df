"""Sphinx extension for the API reference of ``lfssd_tutorial``.

1. Resolve re-exported names to their documentation.

The API reference documents every object where it is defined (``lfssd_tutorial.importance.
compute_importance``), while readers and docstrings use the short, re-exported names
(``lfssd_tutorial.compute_importance``). When a Python cross-reference is not found, this
imports the name, finds the module that defines it and links there. A name that cannot be
imported, or whose definition is not documented, stays a missing reference (and fails the
strict build).

2. Split docstring entries that describe several attributes at once. Napoleon turns
``Attributes: train, test: datasets ...`` into ``:ivar train, test: ...``, which Sphinx
reads as a type (``train,``) and a name; each name gets its own ``:ivar:`` instead.
"""

from __future__ import annotations

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
    return None


_IVAR = re.compile(r"^(\s*):ivar ([\w]+(?:\s*,\s*[\w]+)+):(.*)$")


def split_attribute_fields(app, what, name, obj, options, lines):
    out = []
    for line in lines:
        m = _IVAR.match(line)
        if m:
            indent, names, text = m.groups()
            out.extend(f"{indent}:ivar {n.strip()}:{text}" for n in names.split(","))
        else:
            out.append(line)
    lines[:] = out


def setup(app):
    app.setup_extension("sphinx.ext.napoleon")
    app.connect("missing-reference", resolve)
    # after napoleon (priority 500) has turned "Attributes:" into ":ivar ...:" fields
    app.connect("autodoc-process-docstring", split_attribute_fields, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
