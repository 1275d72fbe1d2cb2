"""The fleet page: one server-rendered HTML table (no scripts), every value escaped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from html import escape

from ultraviolet.attest.views import NodeView

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.35em 0.7em; border-bottom: 1px solid #ddd; }
.state { font-weight: bold; border-radius: 0.3em; padding: 0.1em 0.5em; }
.trusted { background: #d8f5d8; } .untrusted { background: #f9d4d4; }
.stale { background: #fbeec2; } .unknown { background: #e4e4e4; }
.summary span { margin-right: 1.5em; }
code { font-size: 0.9em; }
"""


def _when(moment: dt.datetime | None, now: dt.datetime) -> str:
    if moment is None:
        return "never"
    seconds = int((now - moment).total_seconds())
    ago = f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"
    return f'<time datetime="{moment.isoformat()}">{escape(ago)}</time>'


def _failing(node: NodeView) -> str:
    items = "".join(
        f'<li><code class="finding">{escape(str(f.get("id")))}</code> '
        f"{escape(str(f.get('message', '')))}</li>"
        for f in node.failing
    )
    if node.state == "stale":
        items += '<li><code class="finding">checkin.missed</code> no evidence in time</li>'
    return f"<ul>{items}</ul>" if items else ""


def render_fleet(nodes: Sequence[NodeView], counts: Mapping[str, int], now: dt.datetime) -> str:
    summary = "".join(
        f'<span class="{escape(state)}">{escape(state)}: <b id="count-{escape(state)}">'
        f"{count}</b></span>"
        for state, count in counts.items()
    )
    rows = "".join(
        f'<tr id="node-{escape(n.node_id)}" data-state="{escape(n.state)}">'
        f"<td>{escape(n.node_id)}</td>"
        f'<td><span class="state {escape(n.state)}">{escape(n.state)}</span></td>'
        f"<td>{escape(n.release or '')}</td>"
        f"<td>{_when(n.last_evidence_at, now)}</td>"
        f"<td>{_failing(n)}</td></tr>"
        for n in nodes
    )
    total = sum(counts.values())
    more = f"<p>Showing the first {len(nodes)} of {total} nodes.</p>" if total > len(nodes) else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="30">
<title>Ultraviolet fleet</title><style>{_STYLE}</style></head>
<body><h1>Ultraviolet fleet attestation</h1>
<p class="summary">{summary}</p>
<table><thead><tr><th>Node</th><th>State</th><th>Release</th><th>Last evidence</th>
<th>Failing checks</th></tr></thead>
<tbody>{rows}</tbody></table>{more}
<p><a href="/docs">API</a> · <a href="/metrics">metrics</a></p>
</body></html>
"""
