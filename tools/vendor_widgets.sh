#!/usr/bin/env bash
# Refresh the vendored ipywidgets HTML manager and RequireJS in _vendor/widgets/.
#
# The built book must read offline, so the JavaScript that renders saved widget
# state is served from the book itself instead of a CDN. The files are committed
# (the build needs no download); this script only documents where they come from
# and refreshes them. It needs npm and access to the npm registry.
#
#   bash tools/vendor_widgets.sh [HTML_MANAGER_VERSION] [REQUIREJS_VERSION]
#
# @jupyter-widgets/html-manager 1.x renders the widget state saved by
# ipywidgets 8 (@jupyter-widgets/controls 2.0.0 models).
set -euo pipefail
cd "$(dirname "$0")/.."

html_manager="${1:-1.0.15}"
requirejs="${2:-2.3.8}"
dest="_vendor/widgets"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "@jupyter-widgets/html-manager@$html_manager" "requirejs@$requirejs" >/dev/null)
mkdir -p "$tmp/hm" "$tmp/rj"
tar xzf "$tmp"/jupyter-widgets-html-manager-*.tgz -C "$tmp/hm"
tar xzf "$tmp"/requirejs-*.tgz -C "$tmp/rj"

rm -rf "$dest"
mkdir -p "$dest"
# Drop the source-map comments: the maps are not shipped, and a reader's
# browser with developer tools open would otherwise ask for them.
sed '/^\/\/# sourceMappingURL=/d' "$tmp/hm/package/dist/embed-amd.js" > "$dest/embed-amd.js"
cp "$tmp/hm/package/dist/embed.js.LICENSE.txt" "$dest/embed-amd.js.LICENSE.txt"
# Font Awesome files the widget CSS refers to (icons on buttons); browsers
# today use woff2, then woff, then ttf. The legacy eot/svg variants are left out.
for f in "$tmp"/hm/package/dist/*.woff2 "$tmp"/hm/package/dist/*.woff "$tmp"/hm/package/dist/*.ttf; do
  cp "$f" "$dest/"
done
cp "$tmp/rj/package/require.js" "$dest/require.js"

cat > "$dest/LICENSE.txt" <<'TXT'
embed-amd.js and the font files: @jupyter-widgets/html-manager (ipywidgets)

BSD 3-Clause License

Copyright (c) 2015 Project Jupyter Contributors
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
   this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

The font files are Font Awesome Free (fonts: SIL OFL 1.1, https://fontawesome.com/license/free).

------------------------------------------------------------------------------
require.js: RequireJS

MIT License

Copyright jQuery Foundation and other contributors, https://jquery.org/

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
THE SOFTWARE.
TXT
cat > "$dest/VERSIONS.txt" <<TXT
Vendored by tools/vendor_widgets.sh from the npm registry:
  @jupyter-widgets/html-manager@$html_manager  (dist/embed-amd.js and its font files; BSD-3-Clause, Project Jupyter)
  requirejs@$requirejs                          (require.js; MIT, jQuery Foundation and other contributors)
See LICENSE.txt for the license texts and embed-amd.js.LICENSE.txt for the
third-party code bundled into embed-amd.js.
TXT
echo "vendored into $dest:"
ls -la "$dest"
