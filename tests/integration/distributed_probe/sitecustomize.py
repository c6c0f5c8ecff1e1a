"""Test probe for launched runs (tests/integration/test_distributed.py).

Python imports `sitecustomize` at start-up from PYTHONPATH, so every process of a run that the test
launches with this directory on PYTHONPATH loads this file: the `llmft train` parent, the
accelerate launcher and each training process. With LLMFT_TEST_PROBE=DIR set, the training
processes record what they trained on into DIR/rank<N>.json; the code under test is unchanged.
"""

import os

if os.environ.get("LLMFT_TEST_PROBE"):
    import importlib.abc
    import importlib.machinery
    import sys

    class _WrapLlmftRun(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "llmft.run":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                from probe_record import install

                install(module, os.environ["LLMFT_TEST_PROBE"])

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _WrapLlmftRun())
