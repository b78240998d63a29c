"""Check that every pinned requirement has a binary release for each supported Python.

    python requirements/check_pythons.py [--pythons 3.10,3.11,3.12] [--dest DIR] [FILE ...]

For each Python version and each line of the requirement files (default: base.txt, dev.txt,
ros-wheels.txt) whose environment marker applies to that version, runs
``pip download --no-deps --only-binary=:all: --python-version X.Y`` for Linux x86_64 into
``--dest`` (pip evaluates markers for the running interpreter, not for --python-version,
so the markers are evaluated here). Exit code 1 if any is missing. Needs network access to
the package index; downloads each wheel once (torch is large).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

REQUIREMENTS = Path(__file__).resolve().parent
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "linux_x86_64")


def requirements(path: Path) -> list[Requirement]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            out.append(Requirement(line))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path,
                        default=[REQUIREMENTS / f for f in ("base.txt", "dev.txt",
                                                            "ros-wheels.txt")])
    parser.add_argument("--pythons", default="3.10,3.11,3.12")
    parser.add_argument("--dest", type=Path, help="download folder (default: a temporary one)")
    args = parser.parse_args()
    dest = args.dest or Path(tempfile.mkdtemp(prefix="cldyn-wheels-"))
    failed = []
    for python in args.pythons.split(","):
        env = {"python_version": python, "python_full_version": f"{python}.0"}
        for path in args.files:
            for req in requirements(path):
                if req.marker is not None and not req.marker.evaluate(env):
                    continue
                extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
                spec = f"{req.name}{extras}{req.specifier}"
                cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                       "--disable-pip-version-check", "--only-binary=:all:",
                       "--python-version", python, "-d", str(dest / python),
                       *[a for p in PLATFORMS for a in ("--platform", p)], spec]
                result = subprocess.run(cmd, capture_output=True, text=True)
                status = "ok" if result.returncode == 0 else "MISSING"
                print(f"python {python}  {spec:45s} {status}", flush=True)
                if result.returncode:
                    failed.append(f"{spec} on Python {python}")
    if failed:
        print("no binary release:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
