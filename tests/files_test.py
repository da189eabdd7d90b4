"""Tests for hydra_tf.files: JSON files and run directories."""

import os
import tempfile

import tensorflow as tf

from hydra_tf import files


class JsonTest(tf.test.TestCase):
    def test_round_trip_and_no_temporary_left(self):
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "x.json")
        files.write_json(path, {"b": [1, 2.5], "a": None})
        self.assertEqual(files.read_json(path), {"a": None, "b": [1, 2.5]})
        self.assertEqual(os.listdir(directory), ["x.json"])

    def test_missing_and_corrupt_files_name_the_path(self):
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "x.json")
        with self.assertRaisesRegex(FileNotFoundError, "x.json is missing"):
            files.read_json(path)
        with open(path, "w") as f:
            f.write('{"a": ')
        with self.assertRaisesRegex(ValueError, "x.json is not valid JSON"):
            files.read_json(path)

    def test_make_dir_refuses_a_file(self):
        path = os.path.join(tempfile.mkdtemp(), "file")
        open(path, "w").close()
        with self.assertRaisesRegex(ValueError, "--workdir=.* is a file"):
            files.make_dir(path)
