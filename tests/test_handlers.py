"""Handler loading: distinct clear errors, the allow-list (no database needed)."""

from __future__ import annotations

import pytest

from celery_taskq.core.exceptions import (
    HandlerClassNotFoundError,
    HandlerError,
    HandlerModuleNotFoundError,
    HandlerNotAllowedError,
    NotATaskHandlerError,
)
from celery_taskq.core.handlers import TaskHandler
from celery_taskq.core.loading import create_task_handler, load_handler_class
from tests import handlers


def test_loads_a_handler_by_dotted_path_or_colon() -> None:
    assert load_handler_class("tests.handlers.Succeed") is handlers.Succeed
    assert load_handler_class("tests.handlers:Succeed") is handlers.Succeed
    assert isinstance(create_task_handler("tests.handlers.Succeed"), TaskHandler)


def test_missing_module_has_its_own_error() -> None:
    with pytest.raises(HandlerModuleNotFoundError, match=r"no module named 'tests\.nowhere'"):
        load_handler_class("tests.nowhere.Succeed")


def test_missing_class_has_its_own_error() -> None:
    with pytest.raises(HandlerClassNotFoundError, match="has no class 'Missing'"):
        load_handler_class("tests.handlers.Missing")


def test_class_that_is_not_a_handler_has_its_own_error() -> None:
    with pytest.raises(NotATaskHandlerError, match=r"not a subclass of celery_taskq\.TaskHandler"):
        load_handler_class("tests.handlers.NotAHandler")


def test_function_is_not_a_handler() -> None:
    with pytest.raises(NotATaskHandlerError):
        load_handler_class("tests.helpers.count")


@pytest.mark.parametrize("path", ["", "   ", "Succeed", ".Succeed", "tests.handlers."])
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(HandlerError, match="dotted path"):
        load_handler_class(path)


def test_allow_list_admits_modules_under_a_prefix() -> None:
    assert load_handler_class("tests.handlers.Succeed", ["tests"]) is handlers.Succeed
    assert load_handler_class("tests.handlers.Succeed", ["tests.handlers"]) is handlers.Succeed


def test_allow_list_refuses_everything_else_before_importing() -> None:
    # "tests.hand" is a string prefix of the module but not a package prefix.
    with pytest.raises(HandlerNotAllowedError, match="not allowed"):
        load_handler_class("tests.handlers.Succeed", ["tests.hand"])
    with pytest.raises(HandlerNotAllowedError):
        load_handler_class("os.path.Whatever", ["tests"])
