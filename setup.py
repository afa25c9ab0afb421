"""Build of the compiled kernels in ``_fastcheck/``.

The extension is optional: on a machine without a C compiler the install still succeeds, warns
loudly, and the gateway runs the pure-Python reference engine (and says so at start). Set
``SAFETY_GATEWAY_REQUIRE_COMPILED=1`` to make a failed build an error instead.
``SAFETY_GATEWAY_DEBUG_BUILD=1`` turns bounds checking back on for a test run against it.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

REQUIRE = os.environ.get("SAFETY_GATEWAY_REQUIRE_COMPILED", "") == "1"
DEBUG = os.environ.get("SAFETY_GATEWAY_DEBUG_BUILD", "") == "1"

BANNER = """
*****************************************************************************
  safety-gateway: the compiled envelope engine (_fastcheck) was NOT built:
    {error}
  The gateway will run the pure-Python reference engine, which is correct
  but roughly 30-100x slower. Install a C compiler and Python headers and
  reinstall, or set SAFETY_GATEWAY_REQUIRE_COMPILED=1 to make this an error.
*****************************************************************************
"""


class OptionalBuildExt(build_ext):
    """Build extensions; a failure is loud, and fatal only when the compiled engine is required."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # the compiler's errors come in many types
            self._fail(exc)

    def build_extension(self, ext: object) -> None:
        try:
            super().build_extension(ext)  # type: ignore[arg-type]
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if REQUIRE:
            raise
        sys.stderr.write(BANNER.format(error=f"{type(exc).__name__}: {exc}"))


def extensions() -> list[object]:
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        if REQUIRE:
            raise
        sys.stderr.write(BANNER.format(error=f"build dependency missing: {exc}"))
        return []
    from setuptools import Extension

    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "embedsignature": True,
    }
    args = ["-O3", "-ffp-contract=off", "-fno-fast-math"]
    if DEBUG:
        args = ["-O0", "-g", "-ffp-contract=off"]
    ext = Extension(
        "_fastcheck.envelope",
        ["_fastcheck/envelope.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=args,
    )
    compiled = cythonize([ext], compiler_directives=directives, quiet=True)
    # cythonize() drops `optional`; set it afterwards so a compiler failure is not fatal.
    for e in compiled:
        e.optional = not REQUIRE
    return list(compiled)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
