"""Exports a trained network for deployment.

Folds every pruning mask into a plain Conv2D/Dense kernel and writes
<output_dir>/<name>.keras (loads with no custom objects) and
<output_dir>/<name>_savedmodel (TensorFlow SavedModel).

Example:
  python -m binaries.export --checkpoint=runs/finetune/model.keras \
      --output_dir=runs/export
"""

from absl import app
from absl import flags
from absl import logging

from binaries import common
from hydra_tf import export
from hydra_tf import masks
from hydra_tf import training

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "model.keras to export.", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Output directory.", required=True)
_NAME = flags.DEFINE_string("name", "model", "Base name of the exported files.")


def _export():
    network = training.load_network(_CHECKPOINT.value)
    keras_path, saved_model_path, plain = export.export(network, _OUTPUT_DIR.value, _NAME.value)
    logging.info(
        "Exported %s and %s; kernel sparsity %.4f; per layer: %s",
        keras_path,
        saved_model_path,
        masks.sparsity(export.kernels(plain)),
        export.layer_sparsity(plain),
    )


if __name__ == "__main__":
    app.run(common.main_without_args(_export))
