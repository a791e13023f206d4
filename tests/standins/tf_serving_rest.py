"""STAND-IN for a TensorFlow Serving model server's REST API, for forkops tests only.

Started by the stand-in `docker run` (tests/standins/docker) on 127.0.0.1:PORT. It speaks the
two endpoints forkops uses, in TF Serving's shapes:

* ``GET /v1/models/NAME``: 404 ``{"error": "Servable not found ..."}`` while starting, then
  ``{"model_version_status": [{"version": "123", "state": "START|LOADING|AVAILABLE|END",
  "status": {"error_code": "OK", "error_message": ""}}]}``;
* ``POST /v1/models/NAME:predict`` with ``{"instances": [...]}`` -> ``{"predictions": [...]}``
  computing half_plus_two (y = x / 2 + 2).

Like the patched fork, it decides at start whether the mounted model loads: it decrypts each
``saved_model.pb`` with the key the test says the image was built with (AES-CBC, PKCS#7,
written here independently of forkops.crypto) and loads it only if the result is a plaintext
SavedModel. On a load failure it exits at start, as the real server does (or reports END).
Behaviour knobs come from a JSON file the test writes (see ``DEFAULTS``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DEFAULTS = {
    "decrypts": True,  # False: an unpatched server (loads only plaintext models)
    "key_hex": "",  # the key "compiled into" the image
    "iv_hex": "37" * 16,
    "load_seconds": 0.3,  # START/LOADING before AVAILABLE
    "never_available": False,  # stay LOADING forever
    "gate_dir": "",  # set: no reply until GATE/loading exists, LOADING until GATE/available (tests step it)
    "on_load_failure": "exit",  # "exit" (the real server at start) or "end" (report END, stay up)
    "predict": "correct",  # "correct" | "wrong" | "nonjson"
    "status_reply": "json",  # "json" | "nonjson"
}


def model_loads(model_dir: Path, cfg: dict[str, object]) -> tuple[bool, str]:
    versions = sorted(p for p in model_dir.iterdir() if p.is_dir())
    if not versions:
        return False, f"No versions of servable found under base path {model_dir}"
    for version in versions:
        data = (version / "saved_model.pb").read_bytes()
        if cfg["decrypts"]:
            try:
                dec = Cipher(algorithms.AES(bytes.fromhex(str(cfg["key_hex"]))),
                             modes.CBC(bytes.fromhex(str(cfg["iv_hex"])))).decryptor()
                padded = dec.update(data) + dec.finalize()
                unpadder = padding.PKCS7(128).unpadder()
                data = unpadder.update(padded) + unpadder.finalize()
            except ValueError:
                return False, "DATA_LOSS: Can't decrypt binary proto"
        if not data.startswith(b"\x08\x01"):
            return False, "DATA_LOSS: Can't parse saved_model.pb as binary proto"
    return True, ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--exit-file", type=Path, required=True)
    opts = ap.parse_args()
    cfg = dict(DEFAULTS)
    if opts.config.exists():
        cfg.update(json.loads(opts.config.read_text()))
    exit_code = [0]
    atexit.register(lambda: opts.exit_file.write_text(str(exit_code[0])))

    started = time.monotonic()
    print(f"I tensorflow_serving/model_servers/server.cc] Building single TensorFlow model file config: "
          f"model_name: {opts.model_name} model_base_path: /models/{opts.model_name}", flush=True)
    loads, error = model_loads(opts.model_dir, cfg)
    if not loads and cfg["on_load_failure"] == "exit":
        time.sleep(0.2)
        print(f"E tensorflow_serving/util/retrier.cc] Loading servable: {{name: {opts.model_name} version: 123}} "
              f"failed: {error}", flush=True)
        print(f"E tensorflow_serving/model_servers/main.cc] Failed to start server: {error}", flush=True)
        exit_code[0] = 1
        return 1

    name = opts.model_name

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep the container log readable
            pass

        def reply(self, code: int, body: object, *, raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json" if raw is None else "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def state(self) -> str | None:
            elapsed = time.monotonic() - started
            if not loads:
                return "END"
            if cfg["gate_dir"]:
                gate = Path(str(cfg["gate_dir"]))
                if (gate / "available").exists():
                    return "AVAILABLE"
                return "LOADING" if (gate / "loading").exists() else None
            if cfg["never_available"] or elapsed < float(str(cfg["load_seconds"])):
                return None if elapsed < float(str(cfg["load_seconds"])) / 2 else "LOADING"
            return "AVAILABLE"

        def do_GET(self) -> None:
            if self.path != f"/v1/models/{name}":
                self.reply(404, {"error": "Not found"})
                return
            if cfg["status_reply"] == "nonjson":
                self.reply(200, None, raw=b"<html><body>It works!</body></html>")
                return
            state = self.state()
            if state is None:
                self.reply(404, {"error": f"Servable not found for request: Latest({name})"})
                return
            status = {"error_code": "OK", "error_message": ""}
            if state == "END":
                status = {"error_code": "DATA_LOSS", "error_message": error}
            self.reply(200, {"model_version_status": [{"version": "123", "state": state, "status": status}]})

        def do_POST(self) -> None:
            if self.path != f"/v1/models/{name}:predict" or self.state() != "AVAILABLE":
                self.reply(404, {"error": f"Servable not found for request: Latest({name})"})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            xs = [float(x) for x in body["instances"]]
            if cfg["predict"] == "nonjson":
                self.reply(200, None, raw=b"<html>Internal Server Error</html>")
            elif cfg["predict"] == "wrong":
                self.reply(200, {"predictions": [x / 2 + 3 for x in xs]})
            else:
                self.reply(200, {"predictions": [x / 2 + 2 for x in xs]})

    server = ThreadingHTTPServer(("127.0.0.1", opts.port), Handler)
    print(f"I tensorflow_serving/model_servers/server.cc] Exporting HTTP/REST API at:localhost:{opts.port} ...",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
