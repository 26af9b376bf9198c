"""Build `offline.html`: DVC's plot page with vega, vega-lite and vega-embed inlined, so that
`dvc plots show` / `dvc plots diff` render without internet (DVC's own page loads them from a CDN).

    cd vendor/vega && npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
    for f in *.tgz; do tar xzf "$f" --strip-components=2 package/build/${f%-*}.min.js; done
    python build.py vega.min.js vega-lite.min.js vega-embed.min.js && rm -f *.tgz *.min.js

`.dvc/config` points DVC at it (`plots.html_template`). The page keeps DVC's placeholders
`{refresh_tag}` and `{plot_divs}`; it has no `{scripts}`, so DVC's CDN tags are not added.
"""
from __future__ import annotations

import sys
from pathlib import Path

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot (tristage, offline)</title>
    <!-- vega, vega-lite and vega-embed inlined by vendor/vega/build.py (BSD-3-Clause; see vendor/vega/) -->
%s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def build(scripts: list[Path], out: Path) -> None:
    tags = []
    for path in scripts:
        code = path.read_text(encoding="utf-8")
        if "</script" in code.lower():
            raise SystemExit(f"{path}: contains '</script'; cannot be inlined")
        tags.append(f"    <script type=\"text/javascript\">/* {path.name} */\n{code}\n    </script>")
    out.write_text(PAGE % "\n".join(tags), encoding="utf-8")


if __name__ == "__main__":
    build([Path(p) for p in sys.argv[1:]] or [Path(n) for n in ("vega.min.js", "vega-lite.min.js",
                                                               "vega-embed.min.js")],
          Path(__file__).with_name("offline.html"))
