"""The baseline for the webhook throughput ratio: an aiohttp TLS server that reads the body and answers a fixed
AdmissionReview, with the same TLS settings as gpuguard (so the ratio measures gpuguard's own work).

    python bench/noop_tls_server.py PORT CERT KEY
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpuguard.web.tls import server_context  # noqa: E402

REPLY = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","allowed":true}}'


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=REPLY, content_type="application/json")


def main() -> None:
    port, cert, key = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    app = web.Application(client_max_size=3 * 1024 * 1024)
    app.router.add_post("/mutate", answer)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=server_context(cert, key), access_log=None,
                print=None)


if __name__ == "__main__":
    main()
