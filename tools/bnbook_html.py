"""A small Sphinx extension for the HTML book (loaded from _config.yml).

Jupyter Book 1.0.4 with Sphinx 7.4 writes some inline scripts twice into every
page (sphinx-thebe's configuration, sphinx-togglebutton's selector). The
thebe one declares `const THEBE_JS_URL`, so the second copy throws
"SyntaxError: Identifier 'THEBE_JS_URL' has already been declared" in the
reader's console. This extension drops exact duplicates from the list of
scripts of each page, keeping the first.
"""

from __future__ import annotations

import json


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
    # After the handlers that add per-page scripts (myst-nb's widget scripts).
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
