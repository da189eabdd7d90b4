"""Tests for binaries/common.py: flags to config, and clean exits on bad input."""

import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from binaries import common
from hydra_tf import training
from hydra_tf.experiments import pipeline
from hydra_tf.experiments import report
from hydra_tf.pruning import phases


class CommonTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not flags.FLAGS.is_parsed():
            flags.FLAGS(["test"])

    def test_objective_config_defaults_to_quarter_eps_steps(self):
        with flagsaver.flagsaver(objective="pgd_at", eps=0.2, attack_steps=7):
            config = common.objective_config()
        self.assertEqual(config.name, "pgd_at")
        self.assertAlmostEqual(config.step_size, 0.05)
        self.assertEqual(config.steps, 7)

    def test_explicit_step_size_and_zero_eps(self):
        with flagsaver.flagsaver(attack_step_size=0.01):
            self.assertAlmostEqual(common.objective_config().step_size, 0.01)
        with flagsaver.flagsaver(eps=0.0, objective="pgd_at"):
            self.assertIsNone(common.objective_config().step_size)

    def test_attack_start_flag(self):
        with flagsaver.flagsaver(objective="trades"):
            self.assertEqual(common.objective_config().start, "gaussian")
        with flagsaver.flagsaver(objective="pgd_at"):
            self.assertEqual(common.objective_config().start, "uniform")
        with flagsaver.flagsaver(objective="pgd_at", attack_start="vertex"):
            self.assertEqual(common.objective_config().start, "vertex")
        with self.assertRaises(flags.IllegalFlagValueError):
            flags.FLAGS["attack_start"].parse("normal")

    def test_finetune_starts_at_the_vertex_unless_told(self):
        with flagsaver.flagsaver(objective="trades"):
            self.assertEqual(common.run_settings()["objective"].start, "gaussian")
            self.assertEqual(common.run_settings("prune")["objective"].start, "gaussian")
            self.assertEqual(common.run_settings("finetune")["objective"].start, "vertex")
            self.assertEqual(common.pipeline_settings()["finetune_attack_start"], "default")
        with flagsaver.as_parsed(objective="pgd_at", attack_start="uniform"):
            self.assertEqual(common.run_settings("finetune")["objective"].start, "uniform")
        with flagsaver.as_parsed(objective="trades", trades_start="gaussian"):  # old name
            self.assertEqual(common.run_settings("finetune")["objective"].start, "gaussian")
        with flagsaver.flagsaver(objective="natural"):
            self.assertEqual(common.run_settings("finetune")["objective"].name, "natural")

    def test_old_start_flag_names_still_parse(self):
        # --trades_start / --finetune_trades_start: the names in older commands.
        old_names = flagsaver.as_parsed(trades_start="uniform", finetune_trades_start="vertex")
        with old_names, flagsaver.flagsaver(objective="trades"):
            self.assertEqual(common.objective_config().start, "uniform")
            self.assertEqual(common.pipeline_settings()["finetune_attack_start"], "vertex")

    def test_mixtrain_flags(self):
        with flagsaver.flagsaver(
            objective="mixtrain", eps=0.1, mixtrain_samples=2, mixtrain_every=1.5
        ):
            config = common.objective_config()
        self.assertEqual((config.name, config.samples, config.every), ("mixtrain", 2, 1.5))
        # --eps_ramp unset: each objective keeps its reference's ramp.
        self.assertEqual(config.ramp, "epoch")
        with flagsaver.flagsaver(objective="crown_ibp"):
            self.assertEqual(common.objective_config().ramp, "linear")
        with flagsaver.flagsaver(objective="mixtrain", eps_ramp="smoothed"):
            self.assertEqual(common.objective_config().ramp, "smoothed")
        with (
            flagsaver.flagsaver(objective="ibp", eps_ramp="epoch"),
            self.assertRaisesRegex(ValueError, "Unknown ramp 'epoch'"),
        ):
            common.objective_config()
        with self.assertRaisesRegex(flags.IllegalFlagValueError, "mixtrain_every must be > 0"):
            flags.FLAGS.mixtrain_every = 0.0

    def test_eval_eps_evaluates_at_another_radius_than_training(self):
        with flagsaver.flagsaver(objective="mixtrain", eps=0.1):
            self.assertIsNone(common.pipeline_settings()["eval_eps"])
        with flagsaver.flagsaver(objective="mixtrain", eps=0.1, eval_eps=0.02):
            settings = common.pipeline_settings()
        config = pipeline.PipelineConfig(workdir="unused", keep_ratios=(0.1,), **settings)
        self.assertEqual(config.objective.eps, 0.1)
        self.assertEqual(report.attack_eps(config.attack.to_json()), 0.02)
        # Smoothing has no radius of its own: --eps, unless --eval_eps says otherwise.
        with flagsaver.flagsaver(objective="smoothing", eps=0.3):
            self.assertEqual(common.pipeline_settings()["eval_eps"], 0.3)
        with flagsaver.flagsaver(objective="smoothing", eps=0.3, eval_eps=0.05):
            self.assertEqual(common.pipeline_settings()["eval_eps"], 0.05)

    def test_expected_errors_exit_with_status_one(self):
        for error in (
            ValueError("bad"),
            FileNotFoundError("missing"),
            phases.CheckpointMismatchError("other arch"),
            training.NonFiniteLossError("nan"),
        ):

            def fail(error=error):
                raise error

            with self.assertRaises(SystemExit) as caught:
                common.run_or_exit(fail)
            self.assertEqual(caught.exception.code, 1)

    def test_unexpected_errors_propagate(self):
        def fail():
            raise KeyError("a bug, shown with its traceback")

        with self.assertRaises(KeyError):
            common.run_or_exit(fail)

    def test_main_rejects_positional_arguments(self):
        main = common.main_without_args(lambda: None)
        with self.assertRaisesRegex(Exception, "Unexpected arguments"):
            main(["prog", "stray"])
        main(["prog"])  # no error


if __name__ == "__main__":
    tf.test.main()
