"""Tests for hydra_tf.experiments.report: the one Table-1 renderer, on a hand-made case."""

import tensorflow as tf

from hydra_tf.experiments import report


class ReportTest(tf.test.TestCase):
    def test_method_table(self):
        rows = [
            {"method": "dense", "keep_ratio": 1.0, "robust_acc": 0.7},
            {"method": "lwm", "keep_ratio": 0.1, "robust_acc": 0.5},
            {"method": "hydra", "keep_ratio": 0.1, "robust_acc": 0.6},
            {"method": "hydra", "keep_ratio": 0.01, "robust_acc": 0.4},
        ]
        lines = report.method_table(
            rows,
            cell=lambda r: f"{100 * r['robust_acc']:.0f}",
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


if __name__ == "__main__":
    tf.test.main()
