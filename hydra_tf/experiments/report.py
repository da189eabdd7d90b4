"""The one Table-1 renderer: HYDRA and LWM over keep ratios, and their gap.

The pipeline (one network per cell) and the study (mean ± std over seeds)
print the same table shape, the paper's Table 1; they differ only in how a
cell is written and in the labels.
"""


def keep_ratios(rows):
    """The keep ratios of the pruned rows, largest first (least pruned first)."""
    return sorted({r["keep_ratio"] for r in rows if r["method"] != "dense"}, reverse=True)


def method_table(rows, cell, ratio_label, delta_label):
    """Markdown lines: a header, an LWM and a HYDRA row, and the HYDRA - LWM gap.

    Args:
      rows: dicts with "method" ("dense", "lwm", "hydra"), "keep_ratio" and
        "robust_acc" (the gap is taken on it), plus what `cell` reads.
      cell: row -> the text of its cell.
      ratio_label: keep ratio -> its column header.
      delta_label: the first cell of the gap row.

    Returns:
      The table's lines; a missing cell is "-".
    """
    ratios = keep_ratios(rows)
    by_key = {(r["method"], r["keep_ratio"]): r for r in rows}
    dense = next((r for r in rows if r["method"] == "dense"), None)
    header = ["method", "0% (dense)"] + [ratio_label(k) for k in ratios]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, label in (("lwm", "LWM"), ("hydra", "HYDRA")):
        cells = [label, cell(dense) if dense else "-"]
        cells += [cell(by_key[(method, k)]) if (method, k) in by_key else "-" for k in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    deltas = [delta_label, ""]
    for k in ratios:
        if ("lwm", k) in by_key and ("hydra", k) in by_key:
            gap = by_key[("hydra", k)]["robust_acc"] - by_key[("lwm", k)]["robust_acc"]
            deltas.append(f"{100 * gap:+.1f}")
        else:
            deltas.append("-")
    lines.append("| " + " | ".join(deltas) + " |")
    return lines
