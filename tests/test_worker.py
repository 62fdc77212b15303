"""The worker process settings (``transforms.worker``), each checked in a fresh interpreter."""

import subprocess
import sys

import pytest


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_garbage_collection_is_tuned_once_and_keeps_the_collector_on():
    out = run(
        "import gc\n"
        "from transforms.worker import YOUNG_THRESHOLD, tune_garbage_collection\n"
        "first = tune_garbage_collection()\n"
        "print(first, gc.isenabled(), gc.get_threshold()[0] == YOUNG_THRESHOLD, gc.get_freeze_count() > 0,"
        " tune_garbage_collection())\n")
    assert out == "True True True True False"


@pytest.mark.parametrize("setup", ["gc.disable()", "gc.set_threshold(1000, 10, 10)"])
def test_a_process_whose_owner_set_its_collector_is_left_as_it_is(setup):
    out = run(
        f"import gc\n{setup}\n"
        "before = (gc.isenabled(), gc.get_threshold())\n"
        "from transforms.worker import tune_garbage_collection\n"
        "print(tune_garbage_collection(), (gc.isenabled(), gc.get_threshold()) == before, gc.get_freeze_count())\n")
    assert out == "False True 0"
