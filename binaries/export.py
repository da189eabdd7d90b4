"""Exports a trained network for deployment.

Folds every pruning mask into a plain Conv2D/Dense kernel and writes
<output_dir>/<name>.keras (loads with no custom objects) and
<output_dir>/<name>_savedmodel (TensorFlow SavedModel).

With --format=tflite it also writes TF Lite files under <output_dir>/tflite:
the --tflite_mode asked for, or with --tflite_mode=auto every mode, of which
it picks the smallest file that runs on XNNPACK and keeps accuracy. Each file
is verified with LiteRT on the --dataset test set (clean accuracy, accuracy on
PGD examples crafted on the Keras model at --eval_eps, else --eps, size,
latency, memory); full int8 is calibrated on training images. The report is
tflite/tflite.json.

Examples:
  python -m binaries.export --checkpoint=runs/finetune/model.keras \
      --output_dir=runs/export
  python -m binaries.export --checkpoint=runs/finetune/model.keras \
      --output_dir=runs/export --format=tflite --tflite_mode=auto --test_limit=1000
"""

import os

from absl import app
from absl import flags
from absl import logging

from binaries import common
from hydra_tf import evaluation
from hydra_tf import export
from hydra_tf import files
from hydra_tf.export import tflite_verify
from hydra_tf.models import masks

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "model.keras to export.", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Output directory.", required=True)
_NAME = flags.DEFINE_string("name", "model", "Base name of the exported files.")
_FORMAT = flags.DEFINE_enum(
    "format", "keras", ["keras", "tflite"], "keras: .keras + SavedModel; tflite: also TF Lite."
)


def _export():
    common.require_one_device("binaries.export")
    network = files.load_network(_CHECKPOINT.value)
    keras_path, saved_model_path, plain = export.export(network, _OUTPUT_DIR.value, _NAME.value)
    logging.info(
        "Exported %s and %s; kernel sparsity %.4f; per layer: %s",
        keras_path,
        saved_model_path,
        masks.sparsity(export.kernels(plain)),
        export.layer_sparsity(plain),
    )
    if _FORMAT.value == "tflite":
        if common.TFLITE_MODE.value == "none":
            raise app.UsageError("--format=tflite needs a --tflite_mode other than 'none'.")
        images, labels, representative = tflite_verify.verification_data(
            common.DATASET.value,
            common.DATA_DIR.value,
            common.TEST_LIMIT.value,
            common.TRAIN_LIMIT.value,
            common.SEED.value,
        )
        result = tflite_verify.deploy(
            plain,
            os.path.join(_OUTPUT_DIR.value, "tflite"),
            common.TFLITE_MODE.value,
            images,
            labels,
            evaluation.default_attack(common.eval_eps()),
            representative,
        )
        chosen = result["modes"][result["mode"]]
        logging.info(
            "TF Lite file: %s (%s, %d bytes, %d gzipped); report in %s",
            result["path"],
            result["mode"],
            chosen["bytes"],
            chosen["gzip_bytes"],
            os.path.join(_OUTPUT_DIR.value, "tflite", "tflite.json"),
        )


if __name__ == "__main__":
    app.run(common.main_without_args(_export))
