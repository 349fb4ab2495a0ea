"""A Python prologue that makes every import of torch (or a torch submodule), however indirect, raise
ImportError: scripts run with it prove a code path needs no torch (tests run them in a subprocess)."""

BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test (import of {name})")
        return None
sys.meta_path.insert(0, _NoTorch())
"""
