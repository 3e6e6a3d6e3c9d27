"""A worker taking call after call must not keep the high-water mark of every call.

Each check runs in a fresh interpreter so that what the test suite itself has allocated does
not blur the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, env: dict[str, str] | None = None) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_release_hands_freed_native_memory_back() -> None:
    # What native libraries (onnxruntime, CTranslate2) do: many mid-sized malloc blocks, freed,
    # with a live block above them so glibc cannot give the memory back on its own.
    code = """
import ctypes, json
from worker import memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(64 * 1024) for _ in range(4000)]
for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
pin = libc.malloc(64 * 1024)
for b in blocks:
    libc.free(b)
before = memory.rss_mb()
memory.release()
print(json.dumps({"before": before, "after": memory.rss_mb()}))
"""
    r = _run(code)
    assert r["before"] - r["after"] > 150, r  # 250 MB were freed


def test_kokoro_gives_back_its_working_memory_after_a_long_reply(real_models_dir: Path) -> None:
    # Before the fix onnxruntime's arena kept ~100 MB more after one long sentence, for good.
    code = f"""
import json
from plugins.kokoro.models import load_kokoro
from worker import memory
k = load_kokoro("{real_models_dir}/kokoro/kokoro-v1.0.int8.onnx",
                "{real_models_dir}/kokoro/voices.npz")
k.create("Hello there.", voice="af_heart")
memory.release()
base = memory.rss_mb()
long = ("Thanks for calling the shop, we open at nine tomorrow morning and we close at ten "
        "in the evening, and on Sundays we open at noon and close at six in the evening.")
for _ in range(3):
    k.create(long, voice="af_heart")
memory.release()
print(json.dumps({{"base": base, "after": memory.rss_mb()}}))
"""
    r = _run(code)
    assert r["after"] - r["base"] < 40, r
