"""Tests for benchmarks/harness.py: the host allocator every result records."""

import pytest

from benchmarks import harness


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "glibc malloc"),
        ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}, "glibc malloc"),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.cpu.x=1:glibc.malloc.top_pad=9"},
            "glibc malloc (GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.top_pad=9)",
        ),
        (
            {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2", "MALLOC_CONF": "dirty_decay_ms:-1"},
            "libjemalloc.so.2 (MALLOC_CONF=dirty_decay_ms:-1)",
        ),
    ],
)
def test_host_allocator_names_what_the_environment_sets(monkeypatch, env, expected):
    for name in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert harness.host_allocator() == expected
