"""The suite's own scheduling on two xdist workers (:mod:`tests.scheduling`)."""

from __future__ import annotations

from tests.conftest import PROJECT_ROOT
from tests.scheduling import PARALLEL_MODULES, SERIAL_SCOPE, scope_of


def test_every_module_listed_to_run_in_parallel_exists() -> None:
    missing = sorted(module for module in PARALLEL_MODULES if not (PROJECT_ROOT / module).is_file())
    assert missing == []


def test_tests_that_start_processes_share_one_scope_and_the_rest_keep_their_module() -> None:
    assert scope_of("tests/test_celery.py::test_x[embedded]") == SERIAL_SCOPE
    assert scope_of("tests/chaos/test_kill.py::test_y") == SERIAL_SCOPE
    assert scope_of("tests/test_new_module.py::test_z") == SERIAL_SCOPE
    assert scope_of("tests/test_schema.py::test_a[sqlite]") == "tests/test_schema.py"
