"""Typed results of the pipeline and the study: their rows and their `results.json`.

- `Row`: one network of a pipeline run, its `Evaluation` (what the stage's
  `eval.json` caches) labelled with its method and keep ratio, and its TF
  Lite deployment (`TFLiteRow`, with a `TFLiteModeRow` per verified mode);
- `PipelineResults`: a pipeline run's `results.json`;
- `StudyRow`: one (architecture, method, keep ratio) of a study, mean and
  spread over seeds, with a `SeedResult` per seed;
- `Study`: a study's `results.json`.

`to_json()` writes the file format, in which a row is one flat dict (the TF
Lite fields prefixed `tflite_`), and `from_json()` reads it. Files written
before a field existed still load: such a field is optional, None when
missing, and a None optional field is left out of the JSON, so a file reads
back to what was written.
"""

import dataclasses

# Metadata of a field older files may lack: None then, and left out of the JSON when None.
_OPTIONAL = {"optional": True}


def _json_fields(record, cls):
    """{name: value} of the fields `cls` declares, without the optional ones left None."""
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(record, field.name)
        if value is not None or not field.metadata.get("optional"):
            values[field.name] = value
    return values


def _fields_from_json(cls, data):
    """The values of `cls`'s fields in `data` (a missing optional field is None)."""
    return {
        field.name: data.get(field.name) if field.metadata.get("optional") else data[field.name]
        for field in dataclasses.fields(cls)
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluation:
    """One network's evaluation, cached in its stage's `eval.json`.

    Attributes:
      clean_acc: accuracy on the clean test examples.
      robust_acc: accuracy under the attack, or (smoothing) the certified
        accuracy at the pipeline's radius.
      num_examples: test examples evaluated.
      attack: the attack's settings (`attacks.PGDConfig.to_json()`), or the
        certification's ({"name": "certify_l2", "radius", "n0", "n", ...}).
      sparsity: fraction of zeros in the exported conv and dense kernels.
      layer_sparsity: {layer name: fraction of zeros of its kernel}.
      keras_path, saved_model_path: the exported network, relative to the
        workdir.
      eval_seconds: time the evaluation took (a resumed one: with its killed runs).
      certified_accuracy: (smoothing) {radius: certified accuracy}.
      seconds_per_example: (smoothing) mean certification time.
      stages: (attack cascades such as AutoAttack) the robust accuracy after
        each attack, `cascade.Stage.to_json()` each.
      verified_accuracy: (verifiable objectives) {method: verified accuracy}
        ("ibp", "crown_ibp", "crown"); robust_acc is then the first method's.
      verified_examples: {method: test examples it was measured on}.
      attack_acc: (verifiable objectives) the attack's robust accuracy.
      params, nonzero_params, macs: the exported network's parameters (all,
        and not exactly 0) and multiply-adds per image (`export.costs`).
      eval_key: the settings the evaluation was made with
        (`pipeline.evaluation_key`).
    """

    clean_acc: float
    robust_acc: float
    num_examples: int
    attack: dict
    sparsity: float
    layer_sparsity: dict
    keras_path: str
    saved_model_path: str
    eval_seconds: float
    certified_accuracy: dict | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    seconds_per_example: float | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    stages: list | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    verified_accuracy: dict | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    verified_examples: dict | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    attack_acc: float | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    pgd_acc: float | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    params: int | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    nonzero_params: int | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    macs: int | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    eval_key: dict | None = dataclasses.field(default=None, metadata=_OPTIONAL)

    def to_json(self):
        return _json_fields(self, Evaluation)

    @classmethod
    def from_json(cls, data):
        return cls(**_fields_from_json(Evaluation, data))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TFLiteModeRow:
    """What a row keeps of one verified TF Lite mode (a `tflite.verify` report).

    Every value is None when the report lacks it (a crashed file has no
    accuracy or timing).
    """

    bytes: int | None = None
    gzip_bytes: int | None = None
    xnnpack: bool | None = None
    xnnpack_note: str | None = None
    clean_acc: float | None = None
    robust_acc: float | None = None
    latency_ms: dict | None = None
    load_mb: float | None = None
    crashed: str | None = None

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data):
        """The row of a verification report, or of its JSON (other keys are ignored)."""
        return cls(**{field.name: data.get(field.name) for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class TFLiteRow:
    """A network's TF Lite deployment: the chosen file and what was measured on it.

    In the JSON each field is prefixed `tflite_` (`bytes` is `tflite_bytes`).

    Attributes:
      requested: the mode asked for (`--tflite_mode`, maybe "auto").
      path: the chosen file, relative to the workdir.
      mode: the chosen mode.
      bytes, gzip_bytes: its size, raw and gzipped.
      clean_acc, robust_acc: its accuracy (robust: on the transfer examples).
      keras_clean_acc, keras_robust_acc: the Keras model's, on the same examples.
      latency_ms: {"1": ms, "32": ms}, median at batch 1 and 32.
      load_mb: memory added after load.
      xnnpack: whether XNNPACK prepared it and took every heavy op.
      num_examples: test examples it was verified on.
      modes: {mode name: `TFLiteModeRow`} of every verified mode.
      fp32_bytes: (dense row only) the size of its float32 file.
    """

    _PREFIX = "tflite_"

    requested: str
    path: str
    mode: str
    bytes: int
    gzip_bytes: int
    clean_acc: float | None
    robust_acc: float | None
    keras_clean_acc: float
    keras_robust_acc: float
    latency_ms: dict | None
    load_mb: float | None
    xnnpack: bool
    num_examples: int
    modes: dict | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    fp32_bytes: int | None = dataclasses.field(default=None, metadata=_OPTIONAL)

    def to_json(self):
        values = _json_fields(self, TFLiteRow)
        if self.modes is not None:
            values["modes"] = {name: mode.to_json() for name, mode in self.modes.items()}
        return {self._PREFIX + name: value for name, value in values.items()}

    @classmethod
    def from_json(cls, data):
        """Reads the `tflite_*` keys of `data` (a row, or the stage's `tflite/row.json`)."""
        prefix = cls._PREFIX
        values = _fields_from_json(
            cls, {key[len(prefix) :]: v for key, v in data.items() if key.startswith(prefix)}
        )
        if values["modes"] is not None:
            values["modes"] = {
                name: TFLiteModeRow.from_json(mode) for name, mode in values["modes"].items()
            }
        return cls(**values)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Row(Evaluation):
    """One network of a pipeline run: its evaluation, method, keep ratio and TF Lite file.

    Attributes:
      method: "dense", "hydra" or "lwm".
      keep_ratio: fraction of weights kept (1.0 for dense).
      tflite: its TF Lite deployment, or None (`--tflite_mode=none`).
    """

    method: str
    keep_ratio: float
    tflite: TFLiteRow | None = None

    @classmethod
    def of(cls, evaluation, method, keep_ratio, tflite=None):
        """The row of `evaluation` (an `Evaluation`)."""
        values = {
            field.name: getattr(evaluation, field.name) for field in dataclasses.fields(Evaluation)
        }
        return cls(method=method, keep_ratio=keep_ratio, tflite=tflite, **values)

    def to_json(self):
        row = {"method": self.method, "keep_ratio": self.keep_ratio, **super().to_json()}
        if self.tflite is not None:
            row.update(self.tflite.to_json())
        return row

    @classmethod
    def from_json(cls, data):
        # Rows without TF Lite fields come from `--tflite_mode=none` (or older code).
        tflite = TFLiteRow.from_json(data) if "tflite_mode" in data else None
        return cls.of(Evaluation.from_json(data), data["method"], data["keep_ratio"], tflite)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineResults:
    """A pipeline run's `results.json`.

    Attributes:
      config: the run's `PipelineConfig.to_json()`.
      rows: a `Row` per network (dense, then HYDRA and LWM per keep ratio).
      kept_overlap: fraction of the weights HYDRA keeps at the smallest keep
        ratio that LWM keeps too.
      figures: {name: PNG path relative to the workdir}.
      seconds: the run's wall time.
    """

    config: dict
    rows: tuple
    kept_overlap: float | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    figures: dict | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    seconds: float | None = dataclasses.field(default=None, metadata=_OPTIONAL)

    def to_json(self):
        return {**_json_fields(self, PipelineResults), "rows": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls, data):
        values = _fields_from_json(cls, data)
        return cls(**{**values, "rows": tuple(Row.from_json(r) for r in values["rows"])})


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeedResult:
    """One seed's accuracies in a `StudyRow`.

    `gradient_free_gain` (attack cascades): the robust accuracy Square took
    after the gradient attacks (`cascade.gradient_free_gain`).
    """

    seed: int
    clean_acc: float
    robust_acc: float
    gradient_free_gain: float | None = dataclasses.field(default=None, metadata=_OPTIONAL)

    def to_json(self):
        return _json_fields(self, SeedResult)

    @classmethod
    def from_json(cls, data):
        return cls(**_fields_from_json(cls, data))


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyRow:
    """One (architecture, method, keep ratio) of a study, over seeds.

    Attributes:
      arch, method, keep_ratio: what the row is.
      clean_acc, clean_std, robust_acc, robust_std: mean and sample standard
        deviation over seeds (robust: certified accuracy under smoothing).
      sparsity: mean fraction of zeros of the exported kernels.
      layer_sparsity: the first seed's {layer name: fraction of zeros}.
      seeds: the seeds, in run order.
      per_seed: a `SeedResult` per seed.
      certified_accuracy: (smoothing) {radius: [mean, std]}.
      verified_accuracy: (verifiable objectives) {method: [mean, std]};
        robust_acc is then the first method's.
      verified_examples: {method: test examples it was measured on}.
      attack_acc, attack_std: (verifiable objectives) the attack's robust
        accuracy, mean and std.
      pgd_acc, pgd_std: (`PipelineConfig.also_pgd`) robust accuracy under
        PGD beside the main attack, mean and std.
    """

    arch: str
    method: str
    keep_ratio: float
    clean_acc: float
    clean_std: float
    robust_acc: float
    robust_std: float
    sparsity: float
    layer_sparsity: dict
    seeds: list
    per_seed: tuple
    certified_accuracy: dict | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    verified_accuracy: dict | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    verified_examples: dict | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    attack_acc: float | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    attack_std: float | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    pgd_acc: float | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    pgd_std: float | None = dataclasses.field(default=None, metadata=_OPTIONAL)

    def to_json(self):
        return {**_json_fields(self, StudyRow), "per_seed": [s.to_json() for s in self.per_seed]}

    @classmethod
    def from_json(cls, data):
        values = _fields_from_json(cls, data)
        per_seed = tuple(SeedResult.from_json(s) for s in values["per_seed"])
        return cls(**{**values, "per_seed": per_seed})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Study:
    """A study's `results.json`.

    Attributes:
      config: {"pipeline": the base `PipelineConfig.to_json()`, "archs",
        "seeds", "schedules" (per-architecture epochs)}.
      attack: the evaluation's settings, shared by every row.
      num_test_examples: test examples each network was evaluated on.
      rows: a `StudyRow` per (architecture, method, keep ratio).
      kept_overlap: {arch: [per seed, fraction of HYDRA's kept weights LWM keeps]}.
      figures: {arch: {name: PNG path relative to the study's directory}}.
      runs: [{"arch", "seed", "workdir"}] of every pipeline run.
      seconds: wall time (merged: the sum of the studies').
      merged_seconds: (merged studies) each study's wall time.
      merged_from: (merged studies) the directories merged.
    """

    config: dict
    attack: dict
    num_test_examples: int
    rows: tuple
    kept_overlap: dict
    figures: dict
    runs: list
    seconds: float
    merged_seconds: list | None = dataclasses.field(default=None, metadata=_OPTIONAL)
    merged_from: list | None = dataclasses.field(default=None, metadata=_OPTIONAL)

    def to_json(self):
        return {**_json_fields(self, Study), "rows": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls, data):
        values = _fields_from_json(cls, data)
        return cls(**{**values, "rows": tuple(StudyRow.from_json(r) for r in values["rows"])})
