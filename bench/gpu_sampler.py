"""GPU utilisation while a timed section runs, for both sides of bench/train_speed.py (stdlib only: it is imported
from our venv and from bench/.venv-multivae alike)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from types import TracebackType


class GpuUtilisation:
    """Samples `nvidia-smi`'s utilization.gpu every 100 ms inside a `with` block; `mean` is None where there is no
    nvidia-smi (a CPU run). The figure is the share of time a kernel was running, not of the SMs kept busy."""

    def __init__(self, gpu_index: int = 0) -> None:
        self.gpu_index = gpu_index
        self.samples: list[float] = []
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> GpuUtilisation:
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                [
                    "nvidia-smi",
                    f"--id={self.gpu_index}",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "100",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
            assert self._reader is not None
            self._reader.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None
