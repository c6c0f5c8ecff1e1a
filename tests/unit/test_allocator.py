"""`training.allocator`: which library `llmft train` preloads, the re-execution it does once, what the
run log says, and an explicit `tcmalloc` that cannot be had is an error naming the key. The kernel
caches get their caps unless the environment sets them."""

from __future__ import annotations

import pytest
from conftest import minimal_recipe

import llmft.allocator as allocator
from llmft.config import validate_recipe
from llmft.errors import UserError

FOUND = "/opt/lib/libtcmalloc_minimal.so.4"


def training(**values):
    return validate_recipe(minimal_recipe(training=values)).training


@pytest.fixture
def found(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: FOUND)
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)


def test_finds_the_library_in_the_usual_directories(tmp_path):
    (tmp_path / "libtcmalloc.so.4").write_bytes(b"")
    assert allocator.find_tcmalloc((str(tmp_path),)) == str(tmp_path / "libtcmalloc.so.4")
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")  # the minimal build is preferred
    assert allocator.find_tcmalloc((str(tmp_path),)) == str(tmp_path / "libtcmalloc_minimal.so.4")


def test_auto_preloads_once_keeping_the_users_preload(found):
    env = allocator.preload_environment(training(), {"LD_PRELOAD": "/mine.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == f"{FOUND}:/mine.so" and env["PATH"] == "/bin"
    assert allocator.preload_environment(training(), env) is None  # the re-executed process does not again
    assert allocator.preload_environment(training(), {})["LD_PRELOAD"] == FOUND


@pytest.mark.parametrize("values", [{"allocator": "system"}, {"release_memory": True}])
def test_system_allocator_or_release_memory_do_not_preload(found, values):
    assert allocator.preload_environment(training(**values), {}) is None


def test_nothing_to_preload_when_missing_or_loaded(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)
    assert allocator.preload_environment(training(), {}) is None
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: FOUND)
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: True)
    assert allocator.preload_environment(training(), {}) is None


def test_explicit_tcmalloc_missing_or_not_preloaded_is_an_error(monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    with pytest.raises(
        UserError,
        match=r"^training.allocator: tcmalloc was not found .*apt install libtcmalloc-minimal4.*training.allocator: system",
    ):
        allocator.configure(training(allocator="tcmalloc"))
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: FOUND)
    with pytest.raises(UserError, match=rf"^training.allocator: tcmalloc must be loaded .*llmft train.*LD_PRELOAD={FOUND}"):
        allocator.configure(training(allocator="tcmalloc"))


def test_the_run_log_says_which_allocator(monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: True)
    assert allocator.configure(training()) == "allocator: tcmalloc"
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert "apt install libtcmalloc-minimal4" in allocator.configure(training())
    assert allocator.configure(training(allocator="system")) == "allocator: the system's malloc (training.allocator: system)"


def test_kernel_caches_are_capped_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")
    allocator.cap_kernel_caches()
    import os

    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "128" and os.environ["LRU_CACHE_CAPACITY"] == "7"


def test_release_memory_with_tcmalloc_is_refused():
    with pytest.raises(UserError, match="training.release_memory: sets glibc's malloc thresholds"):
        validate_recipe(minimal_recipe(training={"allocator": "tcmalloc", "release_memory": True}))
