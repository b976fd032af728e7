"""Baseline server for the upload benchmark: a bare FastAPI endpoint that receives the same multipart upload.

It parses the form exactly as any FastAPI app would (``UploadFile`` + ``Form``), reads the image bytes and
answers a small JSON document: the floor that the gateway's cache-hit path is compared with. Served by
uvicorn with the gateway's own options (uvloop/httptools when installed, no access log, one process).

    python -m loadtest.bare_app --port 8765
"""

from __future__ import annotations

import argparse
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, Form, UploadFile


def create_app() -> FastAPI:
    """One POST route taking an image and a prompt; one health route."""
    app = FastAPI(title="bare upload baseline")

    @app.post("/api/infer")
    async def infer(image: Annotated[UploadFile, File()], prompt: Annotated[str, Form()],
                    max_tokens: Annotated[int | None, Form()] = None) -> dict[str, int]:
        """Read the upload and answer its size."""
        data = await image.read()
        return {"image_bytes": len(data), "prompt_chars": len(prompt)}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    opts = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=opts.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
