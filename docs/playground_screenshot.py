"""Take the README's screenshot of `/ui/playground` once every route has answered.

Start a server first, then point this at a playground URL (headless Chromium, Debian's
`chromium`, driven over the DevTools protocol with the `websockets` package uvicorn brings):

    PONDER_MODEL=qwen2.5-coder-0.5b PONDER_API_KEYS=demo:key-demo .venv/bin/ponder serve --port 8123
    .venv/bin/python docs/playground_screenshot.py \
        "http://demo:key-demo@127.0.0.1:8123/ui/playground?q=...&route=none&route=sc&ask=1"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

# true once every column has finished, well or not
FINISHED = "[...document.querySelectorAll('.column')].every(c => /^(done|error)/.test(" \
    "c.querySelector('[id^=status-]').textContent))"  # fmt: skip


async def capture(ws_url: str, page: str, within_s: float) -> bytes:
    """The page's PNG once every route has answered."""
    ids = itertools.count(1)
    async with websockets.connect(ws_url, max_size=64 * 2**20) as ws:

        async def call(method: str, **params: Any) -> dict[str, Any]:
            request_id = next(ids)
            await ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == request_id:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message.get("result", {})
                    return result

        await call("Page.enable")
        await call("Page.navigate", url=page)
        deadline = time.monotonic() + within_s
        while True:
            done = await call("Runtime.evaluate", expression=FINISHED, returnByValue=True)
            if done.get("result", {}).get("value") is True:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the routes had not all answered in {within_s} s")
            await asyncio.sleep(1)
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(shot["data"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="a /ui/playground URL, credentials included, with ask=1")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "playground.png")
    p.add_argument("--size", default="1400,1000", help="window width,height")
    p.add_argument("--within", type=float, default=600.0, help="seconds to wait for answers")
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Chromium is not installed (Debian: apt-get install chromium)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={args.size}", f"--user-data-dir={profile}",
             f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(100):
                try:
                    targets = httpx.get(f"http://127.0.0.1:{port}/json").json()
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                raise SystemExit("Chromium's DevTools endpoint did not answer")
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            args.out.write_bytes(asyncio.run(capture(ws_url, args.url, args.within)))
        finally:
            browser.terminate()
            browser.wait(10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
