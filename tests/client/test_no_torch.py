"""The client library and CLI import and run without torch (the base install has no torch)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A meta-path hook that makes `import torch` fail, as on a machine with only the base install.
BLOCK_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name in ("safetensors", "numpy"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env_path = f"{ROOT}:{ROOT / 'client'}"
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=60)


def test_client_imports_without_torch() -> None:
    result = _run("import chargpt_client, chargpt_client.cli, chargpt.v1.trainer_pb2_grpc, "
                  "chargpt.v1.inference_pb2_grpc; assert 'torch' not in sys.modules; print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_notebook_helpers_work_without_torch_or_numpy() -> None:
    code = ("import struct; from chargpt_client import notebook, types as t; "
            "att = t.Attention(['a', 'b'], [0], [0], (1, 1, 2, 2), 'float32', struct.pack('<4f', 1, 0, .5, .5)); "
            "assert 'chargpt-attention' in att._repr_html_(); "
            "r = t.GenerationResult('b', t.GenerationSummary('LENGTH', 1, 1, 1, False, 0, 0, 0, 0, '', .8, 40, 1.0), "
            "[t.TokenLogprob('b', -1.0, [('a', -.5), ('b', -1.0)])]); "
            "assert abs(sum(p for _, p in notebook.next_char_view(r).steps[0].filtered) - 1) < 1e-9; "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules; print('ok')")
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_runs_without_torch() -> None:
    result = _run("from chargpt_client.cli import main; raise SystemExit(main(['--help']))")
    assert result.returncode == 0, result.stderr
    assert "chargpt" in result.stdout


def test_the_block_works() -> None:
    result = _run("import torch")
    assert result.returncode != 0 and "blocked" in result.stderr


def test_demo_without_the_server_install_says_what_is_missing(tmp_path: Path) -> None:
    result = _run(f"import os; os.chdir({str(tmp_path)!r}); from chargpt_client.cli import main; "
                  "raise SystemExit(main(['demo', '--fast']))")
    assert result.returncode == 2, result.stderr
    assert "needs the server install" in result.stderr and "torch" in result.stderr
