"""The labelling app served by a real uvicorn on 127.0.0.1, for the browser tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from rlhfkit.feedback.app import create_app


@contextlib.contextmanager
def live_app(store, secret: str) -> Iterator[str]:
    """Serve ``create_app`` over ``store`` and yield its base URL; stop the server on exit (the store
    stays open: its owner closes it).

    The socket is bound here (port 0 = a free one) and handed to uvicorn, so there is no race for the
    port; the start-up wait is bounded (30 s) and fails loudly."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(create_app(store.url, secret=secret, store=store),
                                        log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(timeout=15)
        sock.close()
