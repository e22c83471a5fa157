"""A local OpenAI-compatible HTTP endpoint on 127.0.0.1 for judge tests (never a real service)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


def completion(content: str) -> bytes:
    """A chat-completions reply body whose one message says `content`."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


class FakeOpenAI:
    """A local HTTP server; `script` maps the 1-based request number to (status, body bytes)."""

    def __init__(self, script: Callable[[int], tuple[int, bytes]]) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
                outer.headers.append(dict(self.headers))
                status, body = script(len(outer.requests))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
