"""A multi-seed, multi-architecture study: the paper's Table 1 at small scale.

For every architecture and seed the study runs the pipeline (one robust dense
network, and HYDRA and LWM networks derived from it at each keep ratio), then
aggregates over seeds: mean and sample standard deviation of clean and robust
accuracy for every (architecture, method, keep ratio), a Markdown table shaped
like the paper's Table 1 with the HYDRA - LWM gap, and figures.
"""

import dataclasses
import os
import shutil
import statistics
import time

from absl import logging

from hydra_tf import distribute
from hydra_tf import files
from hydra_tf import objectives
from hydra_tf import training
from hydra_tf.evaluation import cascade
from hydra_tf.experiments import analysis
from hydra_tf.experiments import pipeline
from hydra_tf.experiments import records
from hydra_tf.experiments import report
from hydra_tf.pruning import phases

_SCHEDULE_FIELDS = ("pretrain_epochs", "prune_epochs", "finetune_epochs")
# How each of MixTrain's eps ramps reads in a caption (configs without one ramp per epoch).
_MIXTRAIN_RAMPS = {
    "epoch": "linearly per epoch",
    "linear": "linearly per step",
    "smoothed": "per step (smoothed)",
}


def parse_schedules(specs):
    """Per-architecture epochs from specs like "cnn_large=3/2/1".

    Each spec is `<arch>=<pretrain>/<prune>/<finetune>` (epochs, positive
    integers). A larger network can so get a shorter schedule than the rest of
    the study, to fit a time budget; the tables say which schedule each
    architecture had.

    Returns:
      {arch: {"pretrain_epochs": int, "prune_epochs": int, "finetune_epochs": int}}.

    Raises:
      ValueError: a malformed spec or an architecture given twice.
    """
    schedules = {}
    for spec in specs:
        arch, sep, epochs = spec.partition("=")
        parts = epochs.split("/")
        if not sep or not arch or len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(
                f"Bad schedule {spec!r}: expected <arch>=<pretrain>/<prune>/<finetune> epochs, "
                "e.g. cnn_large=3/2/1."
            )
        values = [int(p) for p in parts]
        if min(values) < 1:
            raise ValueError(f"Bad schedule {spec!r}: every phase needs at least one epoch.")
        if arch in schedules:
            raise ValueError(f"Architecture {arch!r} has two schedules.")
        schedules[arch] = dict(zip(_SCHEDULE_FIELDS, values))
    return schedules


def _schedule_text(epochs):
    return (
        f"pretrain {epochs['pretrain_epochs']}, prune {epochs['prune_epochs']}, "
        f"finetune {epochs['finetune_epochs']}"
    )


def _mean_std(values):
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def aggregate(runs):
    """Averages pipeline results over seeds.

    Args:
      runs: list of (arch, seed, `records.PipelineResults` of `pipeline.run`).

    Returns:
      A `records.StudyRow` per (arch, method, keep ratio), in the order of the
      first run of each architecture. Certified runs (smoothing) also get the
      certified accuracy at every radius, mean and std.

    Raises:
      ValueError: if the runs' rows were not all evaluated the same way.
    """
    report.check_comparable([row for _, _, results in runs for row in results.rows])
    groups = {}
    for arch, seed, results in runs:
        for row in results.rows:
            groups.setdefault((arch, row.method, row.keep_ratio), []).append((seed, row))
    rows = []
    for (arch, method, keep_ratio), members in groups.items():
        clean, clean_std = _mean_std([r.clean_acc for _, r in members])
        robust, robust_std = _mean_std([r.robust_acc for _, r in members])
        verified, attack = None, (None, None)
        if all(r.verified_accuracy is not None for _, r in members):
            verified = {
                method: list(_mean_std([r.verified_accuracy[method] for _, r in members]))
                for method in members[0][1].verified_accuracy
            }
            attack = _mean_std([r.attack_acc for _, r in members])
        pgd = (None, None)
        if all(r.pgd_acc is not None for _, r in members):
            pgd = _mean_std([r.pgd_acc for _, r in members])
        certified = None
        if all(r.certified_accuracy is not None for _, r in members):
            certified = {
                radius: list(_mean_std([r.certified_accuracy[radius] for _, r in members]))
                for radius in members[0][1].certified_accuracy
            }
        rows.append(
            records.StudyRow(
                arch=arch,
                method=method,
                keep_ratio=keep_ratio,
                clean_acc=clean,
                clean_std=clean_std,
                robust_acc=robust,
                robust_std=robust_std,
                sparsity=statistics.fmean(r.sparsity for _, r in members),
                layer_sparsity=members[0][1].layer_sparsity,
                seeds=[seed for seed, _ in members],
                per_seed=tuple(
                    records.SeedResult(
                        seed=seed,
                        clean_acc=r.clean_acc,
                        robust_acc=r.robust_acc,
                        gradient_free_gain=(
                            cascade.gradient_free_gain(r.stages) if r.stages else None
                        ),
                    )
                    for seed, r in members
                ),
                certified_accuracy=certified,
                verified_accuracy=verified,
                verified_examples=members[0][1].verified_examples if verified else None,
                attack_acc=attack[0],
                attack_std=attack[1],
                pgd_acc=pgd[0],
                pgd_std=pgd[1],
            )
        )
    return rows


def gap(rows, arch, keep_ratio):
    """Mean HYDRA - LWM robust accuracy of `arch` at `keep_ratio` (None if missing)."""
    return report.gap([r for r in rows if r.arch == arch], keep_ratio)


def _caption(study):
    base = study.config["pipeline"]
    objective, attack = base["objective"], study.attack
    schedules = study.config.get("schedules", {})
    which = "" if not schedules else " (unless an architecture says otherwise)"
    schedule = (
        f"Epochs{which}: pretrain {base['pretrain_epochs']}, prune {base['prune_epochs']} "
        f"(lr {base['prune_lr']:g}), finetune {base['finetune_epochs']}"
        + (
            f" (LWM: {base['prune_epochs'] + base['finetune_epochs']}, HYDRA's prune + finetune "
            "budget)"
            if base.get("lwm_equal_budget")
            else ""
        )
        + f"; training examples: {base['train_limit'] or 'all'}."
    )
    if attack.get("name") == "certify_l2":
        return (
            f"Objective {objective['name']} (Gaussian noise sigma {objective['sigma']:g}"
            + (f", beta {objective['beta']:g}" if "beta" in objective else "")
            + f"). {schedule} Certified accuracy of the smoothed "
            f"classifier at L2 radius {attack['radius']:g} (n0 {attack['n0']}, n {attack['n']}, "
            f"alpha {attack['alpha']:g}) on {study.num_test_examples} test images. "
            "Cells: certified % (clean % of the base network), mean ± std."
        )
    if study.rows[0].verified_accuracy is not None:
        if objective["name"] == "mixtrain":
            training = (
                f"ramped {_MIXTRAIN_RAMPS[objective.get('ramp', 'epoch')]} over "
                f"{objective['ramp_epochs']:g} pretraining epochs, prune and finetune at full "
                f"eps; with probability {objective['probability']:g} a batch adds the "
                f"symbolic-interval loss of {objective['samples']} sampled "
                f"example{'s' if objective['samples'] != 1 else ''}, weighted "
                f"{objective['weight']:g} x{objective['growth']:g} every {objective['every']:g} "
                f"epochs after the ramp, at most {objective['cap']:g}, each phase restarting the "
                "schedule"
            )
        else:
            training = (
                f"eps ramped linearly from 0 over {objective['ramp_epochs']:g} pretraining "
                f"epochs after {objective['warmup_epochs']:g} at eps 0 (prune and finetune at "
                "full eps), "
                if objective["ramp"] == "linear"
                else f"eps ramped ({objective['ramp']}) over {objective['ramp_epochs']:g} "
                f"pretraining epochs after {objective['warmup_epochs']:g} at eps 0, "
            ) + (
                f"clean-loss weight kappa {objective['kappa_start']:g} -> "
                f"{objective['kappa_end']:g}"
                + ("; the CROWN term by loss fusion" if objective.get("loss_fusion") else "")
            )
        verified = report.verified_caption(
            attack, report.table_method(base), study.num_test_examples
        )
        verified = verified[:1].upper() + verified[1:]  # it starts a sentence
        return (
            f"Objective {objective['name']} (L-inf eps {objective['eps']:g}, {training}; "
            f"{base['optimizer']}, lr pretrain {base['pretrain_lr']:g} / finetune "
            f"{base['finetune_lr']:g}, batch {base['batch_size']}). {schedule} {verified}. "
            "Cells: verified % ± std (clean %), mean over seeds."
        )
    return (
        f"Objective {objective['name']} (L-inf eps {objective['eps']:g}, "
        f"{objective['steps']}-step PGD inside training{_start_text(base)}). "
        f"{schedule} "
        f"Robust accuracy under {report.describe_attack(attack, restarts='restarts')} on "
        f"{study.num_test_examples} test images. "
        "Cells: robust % (clean %), mean ± std."
    )


_STARTS = {
    "gaussian": "x + 0.001 N(0, I)",
    "uniform": "a uniform point of the eps-ball",
    "vertex": "a random corner of the eps-ball",
}


def _start_text(base):
    """Where a TRADES / PGD-AT study's training attack starts, per phase ("" for other
    objectives). Read through `PipelineConfig.from_json`, so a study written before a
    setting existed gets its default (and its old name)."""
    config = pipeline.PipelineConfig.from_json(base)
    start = getattr(config.objective, "start", None)
    if start is None:
        return ""
    text = f" from {_STARTS[start]}"
    finetune = config.finetune_attack_start
    if finetune and finetune != start:
        text += f" ({_STARTS[finetune]} in the finetunes)"
    return text


def _models(rows, ratios):
    """(name, row) of each model, dense first, then by keep ratio: "hydra 99%", ..."""
    ordered = [r for r in rows if r.method == "dense"]
    for k in ratios:
        ordered += [r for r in rows if r.keep_ratio == k and r.method != "dense"]
    for r in ordered:
        yield ("dense" if r.method == "dense" else f"{r.method} {(1 - r.keep_ratio) * 100:g}%"), r


def _radius_table(rows, ratios):
    """Certified accuracy at every reported radius, one line per model."""
    radii = sorted(rows[0].certified_accuracy, key=float)
    lines = [
        "",
        "Certified accuracy (%) at each L2 radius, mean over seeds:",
        "",
        "| model | " + " | ".join(f"r={r}" for r in radii) + " |",
        "|" + "---|" * (len(radii) + 1),
    ]
    for name, r in _models(rows, ratios):
        cells = [f"{100 * r.certified_accuracy[radius][0]:.1f}" for radius in radii]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _pgd_table(rows, ratios, attack, base):
    """The main attack beside PGD (`also_pgd`), one line per model (else empty)."""
    if not all(r.pgd_acc is not None for r in rows):
        return []
    main = report.attack_name(attack)
    pgd = f"PGD-{base['eval_steps']} ({base['eval_restarts']} restarts)"
    lines = [
        "",
        f"Robust accuracy (%) under {main} and under {pgd}, mean ± std over seeds:",
        "",
        f"| model | clean | {main} | {pgd} |",
        "|---|---|---|---|",
    ]
    for name, r in _models(rows, ratios):
        lines.append(
            f"| {name} | {100 * r.clean_acc:.1f} | {100 * r.robust_acc:.1f} ± "
            f"{100 * r.robust_std:.1f} | {100 * r.pgd_acc:.1f} ± {100 * r.pgd_std:.1f} |"
        )
    return lines


def markdown(study):
    """A `records.Study` as Markdown: one Table-1-shaped table per architecture."""
    config = study.config
    base = config["pipeline"]
    structured = report.is_structured(base)
    caption = _caption(study) + (report.STRUCTURED_CAPTION if structured else "")
    lines = [
        f"# HYDRA vs LWM on {base['dataset']}: mean ± std over seeds {config['seeds']}",
        "",
        caption,
    ]
    for arch in config["archs"]:
        rows = [r for r in study.rows if r.arch == arch]
        ratios = report.keep_ratios(rows)
        lines += ["", f"## {arch}", ""]
        schedule = config.get("schedules", {}).get(arch)
        if schedule:
            lines += [f"Epochs for {arch}: {_schedule_text(schedule)}.", ""]
        lines += report.method_table(
            rows,
            cell=lambda r: (
                f"{100 * r.robust_acc:.1f} ± {100 * r.robust_std:.1f} ({100 * r.clean_acc:.1f})"
            ),
            ratio_label=lambda k: f"{(1 - k) * 100:g}%" + (" of channels" if structured else ""),
            delta_label="HYDRA - LWM",
        )
        if all(r.certified_accuracy is not None for r in rows):
            lines += _radius_table(rows, ratios)
        lines += report.verified_markdown(
            rows,
            study.attack,
            study.num_test_examples,
            base.get("verify_methods", ()),
            cell=lambda r, m: (
                f"{100 * r.attack_acc:.1f} ± {100 * r.attack_std:.1f}"
                if m == "attack"
                else "{:.1f} ± {:.1f}".format(*(100 * v for v in r.verified_accuracy[m]))
            ),
        )
        lines += _pgd_table(rows, ratios, study.attack, base)
        overlaps = study.kept_overlap.get(arch)
        if overlaps:
            lines += [
                "",
                f"At keep {min(ratios):g}, "
                + ", ".join(f"{100 * o:.1f}%" for o in overlaps)
                + (
                    " (per seed) of the channels HYDRA keeps are also kept by LWM (the largest "
                    "filter L1 norms); HYDRA trades the rest for filters of smaller norm."
                    if structured
                    else " (per seed) of the weights HYDRA keeps are also kept by LWM "
                    "(the largest magnitudes); HYDRA trades the rest for smaller weights."
                ),
            ]
        lines += _masking_lines(rows)
        for name, path in study.figures.get(arch, {}).items():
            lines += ["", f"![{arch} {name}]({path})"]
    if study.merged_from:
        timing = (
            f"Merged from {len(study.merged_from)} studies, whose invocations took "
            + " + ".join(f"{t / 3600:.2f}" for t in study.merged_seconds)
            + " h of wall time (runs already finished in a workdir are reused, not retrained)."
        )
    else:
        timing = (
            f"Wall time of the invocation that wrote this: {study.seconds / 3600:.2f} h "
            "(runs already finished in the workdir are reused, not retrained)."
        )
    lines += ["", timing]
    return "\n".join(lines) + "\n"


def _masking_lines(rows):
    """The networks that fail AutoAttack's Square check, with what Square took per seed."""
    flagged = []
    for r in rows:
        gains = [s for s in r.per_seed if cascade.fails_square_check(s.gradient_free_gain or 0)]
        if gains:
            per_seed = ", ".join(f"{100 * s.gradient_free_gain:.1f} (seed {s.seed})" for s in gains)
            flagged.append(f"- {r.method} keep {r.keep_ratio:g}: {per_seed}")
    if not flagged:
        return []
    return [
        "",
        (
            "Square, which uses no gradient, broke these points (% of the examples) after the "
            "gradient attacks left them robust; AutoAttack flags more than "
            f"{100 * cascade.MASKING_THRESHOLD:g}% as a hint of gradient masking, where the "
            "gradient attacks' figures overstate robustness:"
        ),
        "",
        *flagged,
    ]


def _write(study, output_dir):
    """Writes `results.json` and `results.md` of a `records.Study` to `output_dir`."""
    files.write_json(os.path.join(output_dir, "results.json"), study.to_json())
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(markdown(study))


def _run_config(base, arch, seed, schedules):
    """The pipeline config of one run of the study (`<workdir>/<arch>/seed<k>`)."""
    return dataclasses.replace(
        base,
        arch=arch,
        seed=seed,
        workdir=os.path.join(base.workdir, arch, f"seed{seed}"),
        **(schedules or {}).get(arch, {}),
    )


def progress(base, archs, seeds, schedules=None):
    """How far a study's runs are, from their workdirs alone (nothing is trained or evaluated).

    Args:
      base, archs, seeds, schedules: as for `run`.

    Returns:
      One dict per network, in the order the pipeline makes them: arch, seed,
      network (its stage name), state ("evaluated"; "evaluating (<k> attacks
      done)": trained, attack under way; "trained"; "training <phase> (<k> of
      <n> epochs done)"; "<phase> done": an earlier phase finished, the next
      not started; "not trained") and, once evaluated, its
      `records.Evaluation` as "evaluation".
    """
    networks = []
    for arch in archs:
        for seed in seeds:
            config = _run_config(base, arch, seed, schedules)
            for name, _, _, phase_dir in pipeline.networks(config):
                evaluation = pipeline.cached_evaluation(config, name)
                attack_state = os.path.join(config.workdir, name, pipeline.ATTACK_STATE_FILE)
                if evaluation is not None:
                    state = "evaluated"
                elif os.path.exists(attack_state):
                    done = cascade.attacks_done(attack_state)
                    state = "evaluating" + ("" if done is None else f" ({done} attacks done)")
                elif os.path.exists(os.path.join(phase_dir, training.MODEL_FILE)):
                    state = "trained"
                elif os.path.isdir(os.path.join(config.workdir, name)):
                    state = _training_state(os.path.join(config.workdir, name))
                else:
                    state = "not trained"
                networks.append(
                    {
                        "arch": arch,
                        "seed": seed,
                        "network": name,
                        "state": state,
                        "evaluation": evaluation,
                    }
                )
    return networks


def _training_state(network_dir):
    """The phase under way in a network's directory, with its epochs, or the last phase done."""
    done = None
    for phase in phases.PHASES:
        phase_dir = os.path.join(network_dir, phase)
        if not os.path.isdir(phase_dir):
            continue
        if os.path.exists(os.path.join(phase_dir, training.MODEL_FILE)):
            done = phase
            continue
        history = files.read_history(os.path.join(phase_dir, training.HISTORY_FILE))
        epochs = len(next(iter(history.values()), []))
        try:
            config = files.read_json(os.path.join(phase_dir, training.CONFIG_FILE))
            passes = objectives.data_epochs(
                objectives.from_json(config["objective"]), config["epochs"]
            )
            total = f" of {passes}"
        except (OSError, KeyError, TypeError, ValueError):  # not written yet, or unreadable
            total = ""
        return f"training {phase} ({epochs}{total} epochs done)"
    return f"{done} done" if done else "training"


def progress_markdown(networks, base):
    """`progress`'s networks as a Markdown table: what is measured so far, per seed."""
    done = sum(n["state"] == "evaluated" for n in networks)
    evaluated = [n["evaluation"] for n in networks if n["evaluation"] is not None]
    # The robust column: the attack's name, or what certified and verified rows hold.
    robust = report.attack_name(evaluated[0].attack) if evaluated else "robust"
    robust = robust if base.metric == "robust" else base.metric
    pgd = any(e.pgd_acc is not None for e in evaluated)
    started = any(n["state"] != "not trained" for n in networks)
    lines = [
        f"# Progress of the study in {base.workdir}",
        "",
        f"{done} of {len(networks)} networks evaluated. Accuracy in % on "
        + (f"the first {evaluated[0].num_examples} test images." if evaluated else "test images."),
        "",
        *(
            []
            if started
            else [f"Nothing has started in {base.workdir} (is it the study's --workdir?).", ""]
        ),
        f"| arch | seed | network | state | clean | {robust} |" + (" PGD |" if pgd else ""),
        "|---|---|---|---|---|---|" + ("---|" if pgd else ""),
    ]
    for n in networks:
        e = n["evaluation"]
        cells = ["", ""] if e is None else [f"{100 * e.clean_acc:.1f}", f"{100 * e.robust_acc:.1f}"]
        if pgd:
            cells.append("" if e is None or e.pgd_acc is None else f"{100 * e.pgd_acc:.1f}")
        lines.append(
            f"| {n['arch']} | {n['seed']} | {n['network']} | {n['state']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def run(
    base,
    archs,
    seeds,
    output_dir,
    strategy=None,
    jit_compile=False,
    schedules=None,
    train_only=False,
):
    """Runs the pipeline for every arch and seed; writes the aggregated study.

    Args:
      base: a `pipeline.PipelineConfig`; its `workdir` holds one sub-directory
        per run (`<arch>/seed<k>`), its `arch` and `seed` are replaced.
      archs: architecture names.
      seeds: integer seeds.
      output_dir: where `results.json`, `results.md` and `plots/` go.
      strategy, jit_compile: passed to `pipeline.run`; only the chief writes.
      schedules: optional {arch: {"pretrain_epochs", "prune_epochs",
        "finetune_epochs"}} (see `parse_schedules`) replacing the epochs of
        `base` for those architectures.
      train_only: train every network, evaluate none, write nothing.

    Returns:
      The `records.Study` written to `results.json` (None on a worker that is
      not the chief, or with `train_only`).
    """
    schedules = dict(schedules or {})
    unknown = sorted(set(schedules) - set(archs))
    if unknown:
        raise ValueError(f"Schedules for architectures not in the study: {unknown}.")
    start = time.time()
    files.make_dir(output_dir, "--output_dir")
    files.make_dir(base.workdir)
    runs = []
    for arch in archs:
        for seed in seeds:
            logging.info("Study: %s, seed %d", arch, seed)
            config = _run_config(base, arch, seed, schedules)
            results = pipeline.run(config, strategy, jit_compile=jit_compile, train_only=train_only)
            runs.append((arch, seed, config, results))
    if train_only:
        logging.info("Study: every network is trained (%.2f h).", (time.time() - start) / 3600)
        return None
    if not distribute.is_chief(strategy):
        return None
    rows = aggregate([(arch, seed, results) for arch, seed, _, results in runs])
    smallest = min(base.keep_ratios)
    figures, overlaps = {}, {}
    for arch in archs:
        arch_runs = [(config, results) for a, _, config, results in runs if a == arch]
        overlaps[arch] = [results.kept_overlap for _, results in arch_runs]
        config = arch_runs[0][0]  # magnitudes of the first seed
        kept = analysis.kept_weights(
            os.path.join(config.workdir, "dense", "pretrain", training.MODEL_FILE),
            os.path.join(
                config.workdir,
                pipeline.stage_name(config, "hydra", smallest),
                "prune",
                training.MODEL_FILE,
            ),
            smallest,
        )
        arch_dir = os.path.join(output_dir, arch)
        paths = analysis.figures(
            arch_dir,
            [r for r in rows if r.arch == arch],
            kept,
            smallest,
            title=arch,
            metric=base.metric,
        )
        figures[arch] = {name: os.path.join(arch, path) for name, path in paths.items()}
    first = runs[0][3].rows[0]
    study = records.Study(
        config={
            "pipeline": base.to_json(),
            "archs": list(archs),
            "seeds": list(seeds),
            "schedules": schedules,
        },
        attack=first.attack,
        num_test_examples=first.num_examples,
        rows=tuple(rows),
        kept_overlap=overlaps,
        figures=figures,
        runs=[
            {"arch": arch, "seed": seed, "workdir": config.workdir}
            for arch, seed, config, _ in runs
        ],
        seconds=time.time() - start,
    )
    _write(study, output_dir)
    logging.info("Study finished in %.2f h; results in %s", study.seconds / 3600, output_dir)
    return study


# Pipeline settings that may differ between merged studies: what each run is,
# where it lives, its epochs (kept per architecture), and the deployment mode.
_PER_STUDY_FIELDS = ("arch", "seed", "workdir", "tflite_mode") + _SCHEDULE_FIELDS


def merge(studies, sources, output_dir):
    """Merges studies of different architectures into one study.

    Studies run by separate invocations (say cnn_small and cnn_large, each with
    its own epochs) become one `results.json` / `results.md` with a section per
    architecture, as if one invocation with per-architecture schedules had run
    them. The studies must agree on everything else (dataset, objective,
    attack, keep ratios, seeds, learning rates, test examples).

    Args:
      studies: `records.Study`s (the `results.json` of `run`).
      sources: the directory each study was read from (its figures are copied).
      output_dir: where the merged `results.json`, `results.md` and figures go.

    Returns:
      The merged `records.Study`.

    Raises:
      ValueError: the studies share an architecture or differ in a setting.
    """
    if len(studies) < 2:
        raise ValueError("Merging needs at least two studies.")
    first = studies[0]
    base = first.config["pipeline"]
    archs, schedules = [], {}
    for study, source in zip(studies, sources):
        config = study.config["pipeline"]
        shared = (set(config) & set(base)) - set(_PER_STUDY_FIELDS)
        differing = sorted(k for k in shared if config[k] != base[k])
        if study.config["seeds"] != first.config["seeds"]:
            differing.append("seeds")
        if study.attack != first.attack:
            differing.append("attack")
        if study.num_test_examples != first.num_test_examples:
            differing.append("num_test_examples")
        if differing:
            raise ValueError(f"Study {source} differs from {sources[0]} in {differing}.")
        for arch in study.config["archs"]:
            if arch in archs:
                raise ValueError(f"Architecture {arch!r} is in two studies.")
            archs.append(arch)
            own = study.config.get("schedules", {}).get(arch)
            own = own or {k: config[k] for k in _SCHEDULE_FIELDS}
            if any(own[k] != base[k] for k in _SCHEDULE_FIELDS):
                schedules[arch] = own
    files.make_dir(output_dir, "--output_dir")
    figures = {}
    for study, source in zip(studies, sources):
        for arch, paths in study.figures.items():
            figures[arch] = dict(paths)
            for path in paths.values():
                target = os.path.join(output_dir, path)
                if os.path.abspath(os.path.join(source, path)) != os.path.abspath(target):
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copyfile(os.path.join(source, path), target)
    merged = records.Study(
        config={
            "pipeline": base,
            "archs": archs,
            "seeds": first.config["seeds"],
            "schedules": schedules,
        },
        attack=first.attack,
        num_test_examples=first.num_test_examples,
        rows=tuple(row for study in studies for row in study.rows),
        kept_overlap={k: v for study in studies for k, v in study.kept_overlap.items()},
        figures=figures,
        runs=[run for study in studies for run in study.runs],
        seconds=sum(study.seconds for study in studies),
        merged_seconds=[study.seconds for study in studies],
        merged_from=list(sources),
    )
    _write(merged, output_dir)
    return merged
