"""Tests for hydra_tf.experiments.report: the one Table-1 renderer, on a hand-made case."""

import dataclasses

import tensorflow as tf

from hydra_tf.experiments import records
from hydra_tf.experiments import report


def _row(method, keep_ratio, robust_acc):
    return records.Row(
        method=method,
        keep_ratio=keep_ratio,
        clean_acc=0.8,
        robust_acc=robust_acc,
        num_examples=100,
        attack={"name": "pgd_linf", "eps": 0.1, "steps": 50, "restarts": 2},
        sparsity=1 - keep_ratio,
        layer_sparsity={},
        keras_path="model.keras",
        saved_model_path="model_savedmodel",
        eval_seconds=1.0,
    )


class ReportTest(tf.test.TestCase):
    def test_method_table(self):
        rows = [
            _row("dense", 1.0, 0.7),
            _row("lwm", 0.1, 0.5),
            _row("hydra", 0.1, 0.6),
            _row("hydra", 0.01, 0.4),
        ]
        lines = report.method_table(
            rows,
            cell=lambda r: f"{100 * r.robust_acc:.0f}",
            ratio_label=lambda k: f"{(1 - k) * 100:g}%",
            delta_label="gap",
        )
        self.assertEqual(
            lines,
            [
                "| method | 0% (dense) | 90% | 99% |",
                "|---|---|---|---|",
                "| LWM | 70 | 50 | - |",
                "| HYDRA | 70 | 60 | 40 |",
                "| gap |  | +10.0 | - |",
            ],
        )
        self.assertEqual(report.keep_ratios(rows), [0.1, 0.01])
        self.assertAlmostEqual(report.gap(rows, 0.1), 0.1)
        self.assertIsNone(report.gap(rows, 0.01))  # no LWM row

    def test_stages_table_lists_networks_square_breaks(self):
        def staged(method, after_gradient, after_square):
            stages = [
                {"attack": "apgd-ce", "robust_acc": after_gradient},
                {"attack": "square", "robust_acc": after_square},
            ]
            return dataclasses.replace(_row(method, 0.01, after_square), stages=stages)

        lines = report.stages_markdown([staged("hydra", 0.6, 0.3), staged("lwm", 0.5, 0.499)])
        self.assertIn("| hydra keep 0.01 | 80.0 | 60.0 | 30.0 |", lines)
        flagged = [line for line in lines if line.startswith("- ")]
        self.assertLen(flagged, 1)
        self.assertTrue(flagged[0].startswith("- hydra keep 0.01: square broke 30.00%"))


if __name__ == "__main__":
    tf.test.main()
