"""Check (and with --fix, repair) the environment: `import dac` must work.

descript-audio-codec imports audiotools, which imports torchaudio. The torchaudio wheel
pip picks beside torch 2.13 (2.11.0) is built against another torch and CUDA, and its
compiled extension fails to load (`OSError: Could not load this library ...
_torchaudio.abi3.so`). torchaudio treats a *missing* extension as "unavailable" and imports
fine without it; tristage never uses torchaudio's compiled ops (mel is torch.stft +
librosa's filter bank, resampling is librosa's). So `--fix` moves the unloadable
`torchaudio/lib/*.so` files aside (to `*.so.disabled`), then checks `import dac` again.

    python -m tristage.envcheck          # report, exit 1 if broken
    python -m tristage.envcheck --fix    # repair (run by `make install`)
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

CHECK = "import dac, torch; print(torch.__version__)"


def _try_import_dac() -> tuple[bool, str]:
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    msg = (r.stderr.strip().splitlines() or [""])[-1] if r.returncode else r.stdout.strip()
    return r.returncode == 0, msg


def torchaudio_libs() -> list[Path]:
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or not spec.submodule_search_locations:
        return []
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return sorted(lib.glob("*.so")) if lib.is_dir() else []


def disable_torchaudio_extension() -> list[Path]:
    moved = []
    for so in torchaudio_libs():
        target = so.with_name(so.name + ".disabled")
        so.replace(target)
        moved.append(target)
    return moved


def check(fix: bool = False) -> int:
    ok, msg = _try_import_dac()
    if ok:
        print(f"envcheck: import dac works (torch {msg})")
        return 0
    print(f"envcheck: import dac fails: {msg}")
    if not fix:
        print("envcheck: run `python -m tristage.envcheck --fix`")
        return 1
    moved = disable_torchaudio_extension()
    if moved:
        print(f"envcheck: moved {len(moved)} unloadable torchaudio extension file(s) aside: "
              + ", ".join(p.name for p in moved))
    ok, msg = _try_import_dac()
    print(f"envcheck: import dac {'works' if ok else 'still fails: ' + msg}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tristage.envcheck", description=__doc__.splitlines()[0])
    p.add_argument("--fix", action="store_true", help="repair what can be repaired")
    return check(fix=p.parse_args(argv).fix)


if __name__ == "__main__":
    sys.exit(main())
