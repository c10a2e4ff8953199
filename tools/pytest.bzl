"""pina_py_test: one Bazel py_test per pytest file.

Test files end with
    if __name__ == "__main__": raise SystemExit(pytest.main([__file__, "-q"]))
so running the file runs pytest on it. This macro adds what pytest needs in the
runfiles (pytest.ini, tests/conftest.py). Usage in tests/<pkg>/BUILD:

    load("//tools:pytest.bzl", "pina_py_test")

    pina_py_test(
        name = "test_foo",            # tests/<pkg>/test_foo.py
        deps = ["//pina_tff/<pkg>:foo"],
    )
"""

def pina_py_test(name, srcs = None, deps = [], data = [], size = "small", **kwargs):
    srcs = srcs or [name + ".py"]
    native.py_test(
        name = name,
        srcs = srcs,
        main = srcs[0],
        deps = deps + ["//tests:conftest"],
        data = data + ["//:pytest_ini"],
        size = size,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
