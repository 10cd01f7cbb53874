"""Self-contained HTML pages: every image and video inline as a data URI, the style in the page, no script.

A Content-Security-Policy in the page itself forbids fetching anything but ``data:`` URIs, so a page that
would reach for the network fails loudly in the browser instead of quietly depending on it.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Iterable

_CSP = "default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
video, img.frames { image-rendering: pixelated; display: block; }
figure { display: inline-block; margin: 0.3em; } figcaption { font-size: 0.8em; color: #555; }
.note { color: #555; font-size: 0.9em; } code { font-size: 0.9em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_png(fig) -> bytes:
    """A matplotlib Figure (Agg canvas) as PNG bytes, without the version string (stable bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def img(png: bytes, alt: str) -> str:
    return f'<img src="{data_uri(png, "image/png")}" alt="{esc(alt)}">'


def video(webm: bytes, title: str) -> str:
    """A looping, muted, autoplaying video: plays without JavaScript; ``controls`` to pause or step."""
    return (f'<video src="{data_uri(webm, "video/webm")}" title="{esc(title)}" autoplay loop muted playsinline '
            f'controls></video>')


def fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "–" if value is None else str(value)


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (cells that are already HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for c in row:
            cls = ' class="num"' if isinstance(c, (int, float)) and not isinstance(c, bool) else ""
            cells.append(f"<td{cls}>{c if raw and isinstance(c, str) else esc(fmt(c))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n"
            f"{body}\n</body></html>\n")
