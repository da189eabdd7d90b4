"""Keeps BUILD honest: every module has a target whose deps match its imports.

Bazel cannot run offline here, so this test parses BUILD (Starlark is Python
syntax for what we use) and checks it against the files and their imports.
"""

import ast
import glob
import os
import re

import tensorflow as tf

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Top-level import name -> requirements.txt distribution name.
_THIRD_PARTY = {
    "absl": "absl-py",
    "ai_edge_litert": "ai-edge-litert",
    "keras": "keras",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "scipy": "scipy",
    "tensorflow": "tensorflow",
    "tensorflow_datasets": "tensorflow-datasets",
}
# Target name prefix of each local package's libraries (names are unique in
# the one BUILD file: hydra_tf/export/tflite.py is ":tflite", the sub-package
# hydra_tf/export/__init__.py is ":export", binaries/common.py is
# ":binaries_common", tests/helpers.py is ":test_helpers").
_LOCAL_PACKAGES = {"hydra_tf": "", "binaries": "binaries_", "tests": "test_"}


def _library_name(src):
    """The target name of a library source file (see `_LOCAL_PACKAGES`)."""
    parts = src[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if len(parts) == 1:
        return parts[0]  # hydra_tf/__init__.py, binaries/__init__.py
    return _LOCAL_PACKAGES[parts[0]] + parts[-1]


def _local_module(dotted):
    """The source file of a local module or package `a.b.c`, or None."""
    path = os.path.join(_ROOT, *dotted.split("."))
    if os.path.isfile(path + ".py"):
        return os.path.relpath(path + ".py", _ROOT)
    if os.path.isfile(os.path.join(path, "__init__.py")):
        return os.path.relpath(os.path.join(path, "__init__.py"), _ROOT)
    return None


def _targets():
    with open(os.path.join(_ROOT, "BUILD")) as f:
        tree = ast.parse(f.read())
    targets = {}
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id not in ("py_library", "py_binary", "py_test"):
                continue
            kwargs = {k.arg: k.value for k in node.keywords}
            name = ast.literal_eval(kwargs["name"])
            names.append(name)
            srcs = ast.literal_eval(kwargs["srcs"])
            deps = []
            for dep in kwargs.get("deps", ast.List(elts=[])).elts:
                if isinstance(dep, ast.Call):  # requirement("x")
                    deps.append("pip:" + ast.literal_eval(dep.args[0]))
                else:
                    deps.append(ast.literal_eval(dep))
            targets[name] = {"kind": node.func.id, "srcs": srcs, "deps": set(deps)}
    if len(names) != len(set(names)):
        raise AssertionError(f"BUILD has duplicate target names: {sorted(names)}")
    return targets


def _expected_deps(path):
    with open(os.path.join(_ROOT, path)) as f:
        tree = ast.parse(f.read())
    deps = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in _LOCAL_PACKAGES:
                # `from pkg import module` depends on the module; `from pkg
                # import name` on the package that defines the name.
                for alias in node.names:
                    src = _local_module(f"{node.module}.{alias.name}")
                    src = src or _local_module(node.module)
                    deps.add(":" + _library_name(src))
                continue
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in _THIRD_PARTY:
                deps.add("pip:" + _THIRD_PARTY[top])
    return deps


def _requirements():
    with open(os.path.join(_ROOT, "requirements.txt")) as f:
        return {
            re.split(r"[=<>\[ ]", line.strip())[0].lower()
            for line in f
            if line.strip() and not line.startswith("#")
        }


class BuildTest(tf.test.TestCase):
    def test_every_source_file_has_exactly_one_target(self):
        targets = _targets()
        covered = [src for t in targets.values() for src in t["srcs"]]
        self.assertEqual(len(covered), len(set(covered)), "a file is in two targets")
        files = set()
        for package in ("hydra_tf", "binaries", "benchmarks", "tests"):
            files.update(glob.glob(f"{package}/**/*.py", root_dir=_ROOT, recursive=True))
        files.discard("tests/__init__.py")
        self.assertEqual(sorted(files), sorted(covered))

    def test_kinds_and_names(self):
        for name, target in _targets().items():
            (src,) = target["srcs"]
            package = src.split("/")[0]
            stem = os.path.splitext(os.path.basename(src))[0]
            if package == "tests" and stem.endswith("_test"):
                expected = ("py_test", stem)
            elif package == "binaries" and stem not in ("__init__", "common"):
                expected = ("py_binary", f"hydra_{stem}")
            elif package == "benchmarks" and stem != "__init__":
                expected = ("py_binary", f"benchmark_{stem}")
            else:
                expected = ("py_library", _library_name(src))
            self.assertEqual((target["kind"], name), expected, src)

    def test_deps_match_imports(self):
        requirements = _requirements()
        for name, target in _targets().items():
            (src,) = target["srcs"]
            expected = _expected_deps(src)
            self.assertEqual(sorted(target["deps"]), sorted(expected), f"deps of {name}")
            for dep in target["deps"]:
                if dep.startswith("pip:"):
                    self.assertIn(dep[4:], requirements, f"{name}: {dep} not in requirements.txt")


if __name__ == "__main__":
    tf.test.main()
