"""The text mbxctl's commands print: tables, options, times."""

import time


def table(headers, rows):
    """Lines of a table: a header row, then ``rows``, columns aligned."""
    rows = [headers] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
            for row in rows]


def status_table(headers, rows, statuses):
    """``table`` with a last column STATUS when a row has a status (what
    mbx-northd wrote into a row it cannot use, ovsdb/mbx_nb.md); ``statuses``
    goes with ``rows``, "" for none."""
    statuses = list(statuses)
    if any(statuses):
        headers = list(headers) + ["STATUS"]
        rows = [list(row) + [status or "-"]
                for row, status in zip(rows, statuses)]
    return table(headers, rows)


def options(values):
    """'KEY=VALUE, ...' sorted by key ('' when empty)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def ms_time(ms, precise=False):
    """Milliseconds since the epoch as UTC time, e.g. 2026-01-02T03:04:05Z
    (precise: 2026-01-02T03:04:05.678Z)."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return text + (f".{ms % 1000:03d}Z" if precise else "Z")
