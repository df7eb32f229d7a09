"""The native library (CMakeLists.txt): a clean CMake configure and build from the sources, the C API exported and
nothing else, the header a plain C translation unit accepts, every argument check the Python launchers make
answered with a status and a message before anything reaches a GPU; on a GPU, the library's outputs against
hedgespec_fast.kernels."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
OK, INVALID, UNSUPPORTED, NO_DRIVER = 0, 1, 2, 3


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    missing = [tool for tool in ("cmake", "cc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the native build needs {' and '.join(missing)}, not found on PATH")
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("native")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    archs = os.environ.get("HS_TEST_ARCHS", "80;90")  # the default build: sm_80 and sm_90
    configure = ["cmake", "-S", str(ROOT), "-B", str(out), f"-DHS_ARCHS={archs}",
                 f"-DPython3_EXECUTABLE={sys.executable}"]
    for cmd in (configure, ["cmake", "--build", str(out), "-j2"]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return out


@pytest.fixture(scope="session")
def lib(build):
    library = ctypes.CDLL(str(build / "libhedgespec_kernels.so"))
    library.hs_last_error.restype = ctypes.c_char_p
    library.hs_build_info.restype = ctypes.c_char_p
    library.hs_acceptance_workspace_bytes.restype = ctypes.c_size_t
    library.hs_acceptance_workspace_bytes.argtypes = [ctypes.c_int] * 5 + [ctypes.POINTER(ctypes.c_int)]
    p, i, i64, f, z = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_size_t
    library.hs_acceptance_probs.argtypes = [p, p, i, i, i, i, i64, i64, i64, f, i, i, p, p, z, p]
    library.hs_hedge_update_from_gamma.argtypes = [p, i, i, i64, i64, i, i, i, p, p, p, p, p, p, p, p]
    return library


def test_the_library_exports_the_api_and_nothing_else(build):
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not found")
    names = subprocess.run(["nm", "-D", "--defined-only", str(build / "libhedgespec_kernels.so")],
                           capture_output=True, text=True, check=True).stdout.split()
    exported = sorted(n for n in names if n.startswith("hs_") or n.startswith("cu"))
    assert exported == ["hs_acceptance_probs", "hs_acceptance_workspace_bytes", "hs_build_info",
                        "hs_hedge_update_from_gamma", "hs_last_error"]
    assert (build / "libhedgespec_kernels.a").exists() and (build / "hedgespec-kernels-bench").exists()


def test_the_header_is_plain_c(tmp_path):
    source = tmp_path / "use.c"
    source.write_text('#include "hedgespec_kernels.h"\nint main(void) { hs_status s = HS_OK; '
                      "return (int)s + (int)HS_MODE_TV + (int)HS_BF16 + (int)HS_NORMALHEDGE; }\n")
    cc = shutil.which("cc") or pytest.skip("no C compiler")
    subprocess.run([cc, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                    f"-I{ROOT / 'include'}", str(source)], check=True)


def test_build_info_names_the_architectures(lib):
    info = lib.hs_build_info().decode()
    for arch in os.environ.get("HS_TEST_ARCHS", "80;90").split(";"):
        assert f"sm_{arch}" in info
    assert "specialisations" in info


def _status(lib, call):
    code = call()
    return code, lib.hs_last_error().decode()


def test_bad_arguments_get_a_status_and_a_message(lib):
    fake = ctypes.c_void_p(256)  # never dereferenced: every check below fails first
    out = ctypes.c_void_p(512)
    ws = ctypes.c_void_p(1024)
    big = 1 << 30

    def accept(**kw):
        a = dict(target=fake, drafters=fake, dtype=2, n=8, m=8, v=32000, st=32000, sdn=8 * 32000, sdm=32000, t=1.0,
                 mode=0, top_l=4, out=out, ws=ws, wsb=big)
        a.update(kw)
        return _status(lib, lambda: lib.hs_acceptance_probs(a["target"], a["drafters"], a["dtype"], a["n"], a["m"],
                                                            a["v"], a["st"], a["sdn"], a["sdm"], a["t"], a["mode"],
                                                            a["top_l"], a["out"], a["ws"], a["wsb"], None))

    assert accept(target=None) == (INVALID, accept(target=None)[1]) and "null pointer" in accept(target=None)[1]
    assert accept(dtype=7)[0] == UNSUPPORTED and "dtype" in accept(dtype=7)[1]
    assert accept(mode=9)[0] == UNSUPPORTED and "mode" in accept(mode=9)[1]
    assert accept(mode=2, top_l=0)[0] == INVALID and "top_l" in accept(mode=2, top_l=0)[1]
    assert accept(t=0.0)[0] == INVALID and "temperature" in accept(t=0.0)[1]
    assert accept(n=0)[0] == INVALID and "out of range" in accept(n=0)[1]
    assert accept(v=300000)[0] == INVALID and "vocab" in accept(v=300000)[1]
    assert accept(wsb=16)[0] == INVALID and "workspace" in accept(wsb=16)[1]
    assert accept(sdm=100)[0] == INVALID and "strides" in accept(sdm=100)[1]
    if not torch.cuda.is_available():  # valid arguments reach the driver, which is not there
        code, message = accept()
        assert code == NO_DRIVER and "libcuda" in message
    code, message = _status(lib, lambda: lib.hs_hedge_update_from_gamma(fake, 0, 4, 4, 1, 2, 2, 1, fake, fake, fake,
                                                                       fake, fake, None, fake, None))
    assert code == INVALID and "n_drafters" in message
    code, message = _status(lib, lambda: lib.hs_hedge_update_from_gamma(fake, 4, 4, 4, 1, 2, 5, 1, fake, fake, fake,
                                                                       fake, fake, None, fake, None))
    assert code == UNSUPPORTED and "loss" in message
    code, message = _status(lib, lambda: lib.hs_hedge_update_from_gamma(None, 4, 4, 4, 1, 2, 2, 1, fake, fake, fake,
                                                                       fake, fake, None, fake, None))
    assert code == INVALID and "null pointer" in message


def test_workspace_matches_the_python_launchers_plan(lib):
    from hedgespec_fast.kernels import acceptance

    for n, m, vocab, mode, top_l in ((8, 8, 128256, "tv", 1), (1, 3, 111, "greedy", 1), (16, 8, 151936, "topl", 4)):
        _, ws_f, ws_i, _ = acceptance._plan(m, vocab, n, mode, top_l, 2048, 132)
        status = ctypes.c_int(-1)
        got = lib.hs_acceptance_workspace_bytes(n, m, vocab, {"tv": 0, "greedy": 1, "topl": 2}[mode], top_l,
                                                ctypes.byref(status))
        semaphores = (2 + 2 * max(m, 64) + 3) // 4 * 4
        assert status.value == OK and got == 4 * (semaphores + ws_f + ws_i)


def test_the_bench_driver_says_why_it_cannot_run(build):
    bench = build / "hedgespec-kernels-bench"
    assert "usage" in subprocess.run([str(bench), "--help"], capture_output=True, text=True, check=True).stdout
    if not torch.cuda.is_available():
        result = subprocess.run([str(bench), "--mode", "tv"], capture_output=True, text=True)
        assert result.returncode == NO_DRIVER and "libcuda" in result.stderr


# -- GPU tier: the library against the Python kernels ------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("mode,top_l", [("tv", 1), ("greedy", 1), ("topl", 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_library_matches_the_python_kernels_on_cuda(lib, mode, top_l, dtype):
    from hedgespec_fast import kernels

    n, m, vocab = 5, 7, 32011
    gen = torch.Generator(device="cuda").manual_seed(0)
    target = torch.randn(m, vocab, device="cuda", generator=gen).to(dtype) * 3
    drafters = torch.randn(n, m, vocab, device="cuda", generator=gen).to(dtype) * 3
    want = kernels.acceptance_probs(target, drafters, temperature=0.8, mode=mode, top_l=top_l, backend="triton")
    modes = {"tv": 0, "greedy": 1, "topl": 2}
    status = ctypes.c_int(-1)
    size = lib.hs_acceptance_workspace_bytes(n, m, vocab, modes[mode], top_l, ctypes.byref(status))
    workspace = torch.zeros(size, dtype=torch.uint8, device="cuda")
    out = torch.full((n, m), float("nan"), device="cuda")
    code = lib.hs_acceptance_probs(target.data_ptr(), drafters.data_ptr(), {torch.float32: 0, torch.float16: 1,
                                                                           torch.bfloat16: 2}[dtype], n, m, vocab,
                                   target.stride(0), drafters.stride(0), drafters.stride(1), 0.8, modes[mode], top_l,
                                   out.data_ptr(), workspace.data_ptr(), size,
                                   ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
    assert code == OK, lib.hs_last_error().decode()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, want, atol=2e-6, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("algo", [0, 1, 2])
def test_library_learner_matches_the_python_kernel_on_cuda(lib, algo):
    from hedgespec_fast import kernels

    n, width, draft_len = 6, 11, 4
    gamma = torch.rand(n, width, device="cuda")
    state = [torch.zeros(n, device="cuda") for _ in range(3)] + [torch.full((n,), 1 / n, device="cuda"),
                                                                 torch.zeros(1, dtype=torch.long, device="cuda")]
    mine = [s.clone() for s in state]
    name = ("hedge", "normalhedge", "adanormalhedge")[algo]
    kernels.hedge_update_from_gamma(gamma, *state, draft_len=draft_len, algo=name, backend="triton")
    choice = torch.empty(1, dtype=torch.long, device="cuda")
    code = lib.hs_hedge_update_from_gamma(gamma.data_ptr(), n, width, gamma.stride(0), gamma.stride(1), draft_len, 2,
                                          algo, *[s.data_ptr() for s in mine], None, choice.data_ptr(),
                                          ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
    assert code == OK, lib.hs_last_error().decode()
    torch.cuda.synchronize()
    for a, b in zip(mine, state):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
