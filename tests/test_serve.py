"""`jmvae serve` as a process: which HTTP parser and event loop uvicorn runs on."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.processes import serve_subprocess


def _loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the server's memory map (Linux)")
@pytest.mark.parametrize(
    ("env", "native"), [({}, True), ({"JMVAE_HTTP_PARSER": "h11", "JMVAE_EVENT_LOOP": "asyncio"}, False)]
)
def test_http_parser_and_event_loop_follow_the_settings(
    tiny_checkpoint: Path, env: dict[str, str], native: bool
) -> None:
    with serve_subprocess(tiny_checkpoint, env) as served:
        assert httpx.post(f"{served.url}/generate", json={"attributes": {"Smiling": 2}}, timeout=30).status_code == 200
        maps = _loaded_libraries(served.process.pid)
    # By default uvicorn picks the C parser and loop the package installs; the settings can turn them off.
    assert ("httptools" in maps, "uvloop" in maps) == (native, native)
