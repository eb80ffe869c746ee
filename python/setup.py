"""Builds libnegsamp with CMake from the repository root and ships it inside the package
(negsamp/_lib/), so `pip install ./python` gives a package that works without NEGSAMP_LIBRARY.

Environment:
  NEGSAMP_BUILD_LIB=0      do not build; the package then finds the library through
                           $NEGSAMP_LIBRARY or the system path at run time
  NEGSAMP_CMAKE_ARGS       extra CMake arguments, e.g. "-DNS_CUDA=OFF" for a faster CPU-only build
  NEGSAMP_BUILD_JOBS       parallel build jobs (default 2)
"""
import glob
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def build_library(dest: Path) -> None:
    if os.environ.get("NEGSAMP_BUILD_LIB", "1") == "0":
        print("negsamp: NEGSAMP_BUILD_LIB=0, not building libnegsamp", file=sys.stderr)
        return
    if not (ROOT / "CMakeLists.txt").exists() or not (ROOT / "include" / "negsamp.h").exists():
        print(f"negsamp: no negsamp source tree at {ROOT}; not building libnegsamp "
              "(set NEGSAMP_LIBRARY at run time)", file=sys.stderr)
        return
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("negsamp: cmake is needed to build libnegsamp (or set "
                           "NEGSAMP_BUILD_LIB=0 and NEGSAMP_LIBRARY)")
    build = HERE / "build" / "cmake"
    args = [cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            "-DNS_TESTS=OFF"] + shlex.split(os.environ.get("NEGSAMP_CMAKE_ARGS", ""))
    subprocess.run(args, check=True)
    subprocess.run([cmake, "--build", str(build), "--target", "negsamp", "-j",
                    os.environ.get("NEGSAMP_BUILD_JOBS", "2")], check=True)
    dest.mkdir(parents=True, exist_ok=True)
    libs = glob.glob(str(build / "libnegsamp.so")) + glob.glob(str(build / "libnegsamp.dylib"))
    if not libs:
        raise RuntimeError(f"negsamp: the build produced no libnegsamp in {build}")
    # One real file (ctypes loads it by path; a wheel holds no symlinks).
    shutil.copyfile(os.path.realpath(libs[0]), dest / os.path.basename(libs[0]))


class BuildPyWithLibrary(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            build_library(HERE / "negsamp" / "_lib")
        else:
            build_library(Path(self.build_lib) / "negsamp" / "_lib")


class BinaryDistribution(Distribution):
    """The wheel carries a native library: tag it for the platform."""

    def has_ext_modules(self):
        return os.environ.get("NEGSAMP_BUILD_LIB", "1") != "0"


setup(cmdclass={"build_py": BuildPyWithLibrary}, distclass=BinaryDistribution)
