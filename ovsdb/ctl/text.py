"""The text mbxctl's commands print: tables, options, times."""

import time


def table(headers, rows):
    """Lines of a table: a header row, then ``rows``, columns aligned."""
    rows = [headers] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
            for row in rows]


def options(values):
    """'KEY=VALUE, ...' sorted by key ('' when empty)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def ms_time(ms, precise=False):
    """Milliseconds since the epoch as UTC time, e.g. 2026-01-02T03:04:05Z
    (precise: 2026-01-02T03:04:05.678Z)."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return text + (f".{ms % 1000:03d}Z" if precise else "Z")
