"""A small Sphinx extension for the HTML book (loaded from _config.yml).

1. Widget state of closed widgets. A notebook executed with nbconvert saves
the state of every widget the kernel ever created, closed ones included (the
training loop's progress bars: about 160 models in the MNIST chapter). The
page then carries all that JSON and loads the widget manager (about 4 MB of
JavaScript) for widgets it never shows. Before myst-nb reads a notebook, this
extension keeps only the models that a displayed widget view refers to
(directly or through IPY_MODEL_ references), and drops the state when no view
remains. The notebook file itself is not changed.

2. Duplicate scripts. Jupyter Book 1.0.4 with Sphinx 7.4 writes some inline scripts twice into every
page (sphinx-thebe's configuration, sphinx-togglebutton's selector). The
thebe one declares `const THEBE_JS_URL`, so the second copy throws
"SyntaxError: Identifier 'THEBE_JS_URL' has already been declared" in the
reader's console. This extension drops exact duplicates from the list of
scripts of each page, keeping the first.
"""

from __future__ import annotations

import json
import re

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MODEL_REFERENCE = re.compile(r'IPY_MODEL_([0-9A-Za-z_-]+)|"model_id":\s*"([0-9A-Za-z_-]+)"')


def _referenced_models(value) -> set[str]:
    return {a or b for a, b in MODEL_REFERENCE.findall(json.dumps(value))}


def prune_widget_state(app, docname, source):
    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    try:
        nb = json.loads(source[0])
    except ValueError:
        return
    widgets = nb.get("metadata", {}).get("widgets") or {}
    state = (widgets.get(WIDGET_STATE) or {}).get("state") or {}
    if not state:
        return
    views = [
        out["data"][WIDGET_VIEW]
        for cell in nb.get("cells", [])
        if cell.get("cell_type") == "code"
        for out in cell.get("outputs", [])
        if WIDGET_VIEW in out.get("data", {})
    ]
    keep: set[str] = set()
    todo = [m for m in _referenced_models(views) if m in state]
    while todo:
        model = todo.pop()
        if model not in keep:
            keep.add(model)
            todo += [m for m in _referenced_models(state[model]) if m in state and m not in keep]
    if len(keep) == len(state):
        return
    if keep:
        widgets[WIDGET_STATE]["state"] = {k: v for k, v in state.items() if k in keep}
    else:
        del nb["metadata"]["widgets"]
    source[0] = json.dumps(nb)


def _key(script) -> tuple[str, str]:
    filename = str(getattr(script, "filename", script) or "")  # None and "" both mean inline
    attributes = getattr(script, "attributes", {}) or {}
    return filename, json.dumps(attributes, sort_keys=True, default=str)


def drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, str]] = set()
    unique = []
    for script in scripts:
        key = _key(script)
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("source-read", prune_widget_state)
    # After the handlers that add per-page scripts (myst-nb's widget scripts).
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
