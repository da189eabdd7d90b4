"""Reports: the one Table-1 renderer, and the pipeline's Markdown.

The pipeline (one network per cell, `records.Row`) and the study (mean ± std
over seeds, `records.StudyRow`) print the same table shape, the paper's
Table 1 (`method_table`); they differ only in how a cell is written and in
the labels. `results_markdown` and `deployment_markdown` write the pipeline's
`results.md`; `check_comparable` keeps rows evaluated differently out of one
table.
"""

from hydra_tf.evaluation import cascade

_ATTACK_NAMES = {
    "autoattack": "AutoAttack",
    "autoattack-extended": "AutoAttack, extended",
    "apgd-ce": "APGD-CE",
    "apgd-dlr": "APGD-DLR",
    "apgd-t": "APGD-T",
    "fab-t": "FAB-T",
    "square": "Square",
}


def attack_name(attack):
    """A short name of an attack's settings (its `to_json()`): "PGD-50", "AutoAttack", ..."""
    if attack.get("name") == "pgd_linf":
        return f"PGD-{attack['steps']}"
    return _ATTACK_NAMES.get(attack.get("name"), attack.get("name"))


def attack_eps(attack):
    """The L-inf radius of an attack's settings (a cascade's: its first attack's)."""
    return attack["eps"] if "eps" in attack else attack["attacks"][0]["eps"]


def describe_attack(attack, restarts="restart(s)"):
    """The attack of a table caption, for example "L-inf PGD-50 with 2 restart(s) at eps 0.1"."""
    if attack.get("name") == "pgd_linf":
        return (
            f"L-inf PGD-{attack['steps']} with {attack['restarts']} {restarts} at eps "
            f"{attack['eps']:g}"
        )
    if attack.get("name") in ("autoattack", "autoattack-extended"):
        parts = ", ".join(
            attack_name(a) + (f" ({a['restarts']} restarts)" if a.get("restarts", 1) > 1 else "")
            for a in attack["attacks"]
        )
        standard = attack["name"] == "autoattack"
        return (
            f"{'standard AutoAttack' if standard else 'AutoAttack extended'} ({parts}, each on "
            "the points the earlier ones left robust"
            f"{'' if standard else '; the first four are standard AutoAttack'}) "
            f"at L-inf eps {attack_eps(attack):g}"
        )
    return f"L-inf {attack_name(attack)} at eps {attack['eps']:g}"


def stages_markdown(rows):
    """Robust accuracy after each attack of a cascade, one line per network (else empty)."""
    staged = [r for r in rows if getattr(r, "stages", None)]
    if not staged:
        return []
    names = [_ATTACK_NAMES.get(s["attack"], s["attack"]) for s in staged[0].stages]
    pgd = all(getattr(r, "pgd_acc", None) is not None for r in staged)
    if pgd:
        names.append("PGD (separately)")
    lines = [
        "",
        "Robust % after each attack (each runs on the points the earlier ones left robust):",
        "",
        "| network | clean | " + " | ".join(names) + " |",
        "|" + "---|" * (len(names) + 2),
    ]
    for r in staged:
        cells = [f"{r.method} keep {r.keep_ratio:g}", f"{100 * r.clean_acc:.1f}"]
        cells += [f"{100 * s['robust_acc']:.1f}" for s in r.stages]
        if pgd:
            cells.append(f"{100 * r.pgd_acc:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    flagged = [(r, cascade.masking_warning(r.stages)) for r in staged]
    flagged = [(r, warning) for r, warning in flagged if warning]
    if flagged:
        lines += ["", "Gradient masking (AutoAttack's Square check):", ""]
        lines += [f"- {r.method} keep {r.keep_ratio:g}: {warning}." for r, warning in flagged]
    return lines


VERIFY_NAMES = {
    "ibp": "IBP",
    "crown_ibp": "CROWN-IBP",
    "crown": "CROWN",
    "symbolic": "symbolic-interval",
}


def table_method(config):
    """The bound whose verified accuracy a table reports: the first of `verify_methods`.

    Args:
      config: a pipeline config as JSON (`PipelineConfig.to_json()`).
    """
    return config.get("verify_methods", ["ibp"])[0]


def verified_caption(attack, method, num_examples):
    """The caption sentence of a table of `method`-verified accuracy (at `attack`'s eps)."""
    return (
        f"{VERIFY_NAMES[method]}-verified accuracy at L-inf eps {attack_eps(attack):g} (the ball "
        f"clipped to [0, 1]) on {num_examples} test examples"
    )


def verified_markdown(rows, attack, num_examples, methods, cell=None):
    """Every network's verified accuracy by each bound, and under the attack (else empty).

    Args:
      rows: `records.Row`s (one network each) or `records.StudyRow`s.
      attack: the attack's settings (its `to_json()`).
      num_examples: test examples of the table (a bound measured on fewer says so).
      methods: the bounds, in column order (the config's `verify_methods`).
      cell: (row, method or "attack") -> text; by default the row's value in %.
    """
    verified = [r for r in rows if getattr(r, "verified_accuracy", None)]
    if not verified:
        return []
    if cell is None:
        cell = lambda r, m: (
            f"{100 * (r.attack_acc if m == 'attack' else r.verified_accuracy[m]):.1f}"
        )
    methods = [m for m in methods if m in verified[0].verified_accuracy]
    examples = verified[0].verified_examples or {}
    names = [
        VERIFY_NAMES[m]
        + (f" ({examples[m]} ex.)" if examples.get(m, num_examples) != num_examples else "")
        for m in methods
    ]
    checked = (
        "; no point verified by any bound was broken by the attack (checked)"
        if attack.get("name") != "pgd_linf"
        else ""
    )
    attack = attack_name(attack)
    lines = [
        "",
        f"Verified accuracy by each bound, and robust accuracy under {attack} (%){checked}:",
        "",
        "| network | clean | " + " | ".join(names) + f" | {attack} |",
        "|" + "---|" * (len(names) + 3),
    ]
    ordered = [r for r in verified if r.method == "dense"]
    for k in keep_ratios(verified):
        ordered += [r for r in verified if r.keep_ratio == k and r.method != "dense"]
    for r in ordered:
        name = "dense" if r.method == "dense" else f"{r.method} {(1 - r.keep_ratio) * 100:g}%"
        cells = [name, f"{100 * r.clean_acc:.1f}"]
        cells += [cell(r, m) for m in methods] + [cell(r, "attack")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def keep_ratios(rows):
    """The keep ratios of the pruned rows, largest first (least pruned first)."""
    return sorted({r.keep_ratio for r in rows if r.method != "dense"}, reverse=True)


def gap(rows, keep_ratio):
    """HYDRA - LWM robust accuracy of `rows` at `keep_ratio` (None if either is missing)."""
    found = {r.method: r.robust_acc for r in rows if r.keep_ratio == keep_ratio}
    if "hydra" not in found or "lwm" not in found:
        return None
    return found["hydra"] - found["lwm"]


def method_table(rows, cell, ratio_label, delta_label):
    """Markdown lines: a header, an LWM and a HYDRA row, and the HYDRA - LWM gap.

    Args:
      rows: `records.Row`s or `records.StudyRow`s of one network family:
        their method ("dense", "lwm", "hydra"), keep ratio and robust
        accuracy (the gap is taken on it), plus what `cell` reads.
      cell: row -> the text of its cell.
      ratio_label: keep ratio -> its column header.
      delta_label: the first cell of the gap row.

    Returns:
      The table's lines; a missing cell is "-".
    """
    ratios = keep_ratios(rows)
    by_key = {(r.method, r.keep_ratio): r for r in rows}
    dense = next((r for r in rows if r.method == "dense"), None)
    header = ["method", "0% (dense)"] + [ratio_label(k) for k in ratios]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, label in (("lwm", "LWM"), ("hydra", "HYDRA")):
        cells = [label, cell(dense) if dense else "-"]
        cells += [cell(by_key[(method, k)]) if (method, k) in by_key else "-" for k in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    deltas = [delta_label, ""]
    for k in ratios:
        delta = gap(rows, k)
        deltas.append("-" if delta is None else f"{100 * delta:+.1f}")
    lines.append("| " + " | ".join(deltas) + " |")
    return lines


def check_comparable(rows):
    """Raises ValueError unless every row was evaluated the same way.

    One table must not mix, say, PGD-10 and PGD-50 numbers, or different test
    sets: each row's attack (or certification) and number of examples must
    agree.
    """
    first = rows[0]
    for row in rows[1:]:
        for field, value, expected in (
            ("attack", _without_seed(row.attack), _without_seed(first.attack)),
            ("num_examples", row.num_examples, first.num_examples),
        ):
            if value != expected:
                raise ValueError(
                    f"Rows evaluated differently cannot share a table: {row.method} keep "
                    f"{row.keep_ratio:g} has {field} {value}, {first.method} has {expected}."
                )


def _without_seed(attack):
    """An evaluation's settings without its noise seed (certification's follows the
    run's seed, so a study's seeds certify with different noise, as they should)."""
    if isinstance(attack, dict):
        return {key: value for key, value in attack.items() if key != "seed"}
    return attack


# Appended to the caption of a structured run's (or study's) table.
STRUCTURED_CAPTION = (
    " Structured pruning: each ratio is the share of every layer's channels removed "
    "(filters, dense units; the logits stay), and LWM is L1-norm filter pruning."
)


def is_structured(config):
    """Whether a pipeline config (its JSON dict) prunes whole channels."""
    return config.get("granularity", "weight") == "channel"


def _cost_cells(row):
    """The "params (non-zero)" and "MMACs" cells of a row ("-" when not recorded)."""
    params = "-" if row.params is None else f"{row.params:,} ({row.nonzero_params:,})"
    macs = "-" if row.macs is None else f"{row.macs / 1e6:.2f}"
    return params, macs


def results_markdown(results):
    """A pipeline run's `records.PipelineResults` as Markdown, shaped like the paper's Table 1."""
    config = results.config
    rows = results.rows
    check_comparable(rows)
    ratios = keep_ratios(rows)
    attack = rows[0].attack
    objective = config["objective"]
    if attack.get("name") == "certify_l2":
        caption = (
            f"Objective {objective['name']} (sigma {objective['sigma']:g}); certified "
            f"accuracy of the smoothed classifier at L2 radius {attack['radius']:g} "
            f"(n0 {attack['n0']}, n {attack['n']}, alpha {attack['alpha']:g}), on "
            f"{rows[0].num_examples} test examples. Cells: certified % (clean % of the "
            "base network)."
        )
    elif rows[0].verified_accuracy is not None:
        caption = (
            f"Objective {objective['name']} (eps {objective['eps']:g}); "
            f"{verified_caption(attack, table_method(config), rows[0].num_examples)}. "
            "Cells: verified % (clean %)."
        )
    else:
        caption = (
            f"Objective {objective['name']} (eps {objective['eps']:g}); "
            f"robust accuracy under {describe_attack(attack)}, on {rows[0].num_examples} test "
            "examples. Cells: robust % (clean %)."
        )
    structured = is_structured(config)
    if structured:
        caption += STRUCTURED_CAPTION
    unit = " of channels" if structured else ""
    lines = [f"# HYDRA vs LWM: {config['arch']} on {config['dataset']}", "", caption, ""]
    lines += method_table(
        rows,
        cell=lambda r: f"{100 * r.robust_acc:.1f} ({100 * r.clean_acc:.1f})",
        ratio_label=lambda k: f"{(1 - k) * 100:g}% pruned{unit}",
        delta_label="HYDRA - LWM (robust)",
    )
    lines += verified_markdown(
        rows, rows[0].attack, rows[0].num_examples, config.get("verify_methods", ())
    )
    lines += stages_markdown(rows)
    dense = next((r for r in rows if r.method == "dense"), None)
    if structured and dense is not None and dense.params:
        lines += ["", "Parameters of the exported (smaller) networks:", ""]
        for r in rows:
            lines.append(
                f"- {r.method} keep {r.keep_ratio:g}: {r.params:,} "
                f"({100 * r.params / dense.params:.1f}% of dense), "
                f"{r.macs / 1e6:.2f} M multiply-adds per image"
            )
    else:
        lines += ["", "Measured sparsity of the exported kernels:", ""]
        for r in rows:
            lines.append(f"- {r.method} keep {r.keep_ratio:g}: {100 * r.sparsity:.2f}% zeros")
    if results.kept_overlap is not None:
        smallest = min(ratios)
        what = (
            ("channels", "largest-L1-norm filters", "filters")
            if structured
            else ("weights", "largest-magnitude weights", "weights")
        )
        lines += [
            "",
            (
                f"At keep {smallest:g}, {100 * results.kept_overlap:.1f}% of the {what[0]} HYDRA "
                f"keeps are among the {what[1]} LWM keeps; the rest are smaller {what[2]} that "
                "LWM prunes."
            ),
        ]
    for name, path in (results.figures or {}).items():
        lines += ["", f"![{name}]({path})"]
    lines += deployment_markdown(rows)
    if results.seconds is not None:
        lines += ["", f"Total time: {results.seconds / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def deployment_markdown(rows):
    """The TF Lite table of the results (empty if nothing was exported)."""
    deployed = [r for r in rows if r.tflite is not None]
    if not deployed:
        return []
    examples = deployed[0].tflite.num_examples
    dense = next((r.tflite for r in deployed if r.tflite.fp32_bytes is not None), None)
    percent = lambda v: "-" if v is None else f"{100 * v:.1f}"
    lines = [
        "",
        "## Deployment (TF Lite)",
        "",
        (
            f"Each network's TF Lite file, verified with LiteRT on {examples} "
            "test images. Robust accuracy: adversarial examples crafted on the Keras model (the "
            "table's attack) transferred to the file; Keras' accuracy on the same examples in "
            "parentheses. Latency: median at batch 1 / 32, 2 threads. Parameters (non-zero) "
            "and multiply-adds per image of the exported Keras model, as it runs."
        ),
        "",
        (
            "| model | mode | params (non-zero) | MMACs | bytes | gzip bytes | dense fp32 / this "
            "| latency ms | clean % | robust % |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in deployed:
        t = r.tflite
        ratio = f"{dense.fp32_bytes / t.bytes:.1f}x" if dense else "-"
        gz_ratio = f"{dense.fp32_bytes / t.gzip_bytes:.1f}x" if dense else "-"
        latency = t.latency_ms
        timing = "-" if latency is None else f"{latency['1']:.3f} / {latency['32']:.2f}"
        name = "dense" if r.method == "dense" else f"{r.method} {r.keep_ratio:g}"
        params, macs = _cost_cells(r)
        lines.append(
            f"| {name} | {t.mode} | {params} | {macs} | {t.bytes} | {t.gzip_bytes} | "
            f"{ratio} (gzip {gz_ratio}) | {timing} | {percent(t.clean_acc)} "
            f"({percent(t.keras_clean_acc)}) | {percent(t.robust_acc)} "
            f"({percent(t.keras_robust_acc)}) |"
        )
    if dense:
        lines += ["", f"Dense fp32 file: {dense.fp32_bytes} bytes."]
    most_pruned = min(
        (r for r in deployed if r.method == "hydra" and len(r.tflite.modes or {}) > 1),
        key=lambda r: r.keep_ratio,
        default=None,
    )
    if most_pruned:
        lines += [
            "",
            f"Every mode of hydra {most_pruned.keep_ratio:g} (what `auto` chose from):",
            "",
            "| mode | bytes | gzip bytes | XNNPACK | latency ms | load MB | clean % | robust % |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for mode, m in most_pruned.tflite.modes.items():
            timing = (
                "-" if not m.latency_ms else f"{m.latency_ms['1']:.3f} / {m.latency_ms['32']:.2f}"
            )
            load = "-" if m.load_mb is None else f"{m.load_mb:.1f}"
            xnnpack = "yes" if m.xnnpack else f"no: {m.xnnpack_note}"
            lines.append(
                f"| {mode} | {m.bytes} | {m.gzip_bytes} | {xnnpack} | {timing} | {load} | "
                f"{percent(m.clean_acc)} | {percent(m.robust_acc)} |"
            )
    return lines


def deployment_points(results_list):
    """The deployed networks of several pipeline runs, as dicts for the comparison.

    Args:
      results_list: `records.PipelineResults` of runs on one architecture and
        dataset, e.g. an unstructured and a structured run (sharing their
        dense network: its row is taken once).

    Returns:
      A list of dicts: "group" ("dense", "unstructured HYDRA", "structured
      LWM", ...), "label" (the keep ratio), "row" (the `records.Row`),
      "latency_ms" (batch 1) and "robust_acc".

    Raises:
      ValueError: runs on different architectures or datasets, or a run
        without TF Lite rows (`--tflite_mode=none`).
    """
    keys = {(r.config["arch"], r.config["dataset"]) for r in results_list}
    if len(keys) != 1:
        raise ValueError(f"Compare runs of one architecture and dataset. Received: {sorted(keys)}")
    points, dense_seen = [], False
    for results in results_list:
        structured = is_structured(results.config)
        for row in results.rows:
            if row.tflite is None or row.tflite.latency_ms is None:
                raise ValueError(
                    f"{row.method} keep {row.keep_ratio:g} has no measured TF Lite file: "
                    "run the pipeline with a --tflite_mode other than none."
                )
            if row.method == "dense":
                if dense_seen:
                    continue
                dense_seen = True
                group, label = "dense", "dense"
            else:
                kind = "structured" if structured else "unstructured"
                group = f"{kind} {row.method.upper() if row.method == 'lwm' else 'HYDRA'}"
                label = f"{row.keep_ratio:g}"
            points.append(
                {
                    "group": group,
                    "label": label,
                    "row": row,
                    "latency_ms": row.tflite.latency_ms["1"],
                    "robust_acc": row.robust_acc,
                }
            )
    return points


def deployment_comparison(points, attack):
    """Markdown: the deployment table of `deployment_points` and the trade at equal latency."""
    percent = lambda v: f"{100 * v:.1f}"
    lines = [
        (
            "| network | keep | params (non-zero) | MMACs | TF Lite bytes | latency ms "
            f"(batch 1 / 32) | clean % | {attack} robust % |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        r, t = p["row"], p["row"].tflite
        params, macs = _cost_cells(r)
        lines.append(
            f"| {p['group']} | {p['label']} | {params} | {macs} | {t.bytes:,} | "
            f"{t.latency_ms['1']:.3f} / {t.latency_ms['32']:.2f} | {percent(r.clean_acc)} | "
            f"{percent(r.robust_acc)} |"
        )
    unstructured = [p for p in points if p["group"] == "unstructured HYDRA"]
    structured = [p for p in points if p["group"] == "structured HYDRA"]
    if unstructured and structured:
        lines += [
            "",
            (
                "At equal latency: each structured HYDRA network against the unstructured "
                "HYDRA network closest to it in measured latency."
            ),
            "",
        ]
        for s in structured:
            u = min(unstructured, key=lambda p: abs(p["latency_ms"] - s["latency_ms"]))
            lines.append(
                f"- structured keep {s['label']}: {s['latency_ms']:.3f} ms, robust "
                f"{percent(s['robust_acc'])}%; unstructured keep {u['label']}: "
                f"{u['latency_ms']:.3f} ms ({u['latency_ms'] / s['latency_ms']:.1f}x slower), "
                f"robust {percent(u['robust_acc'])}%."
            )
    return lines
