"""`nodecode serve`: a JSON API and a small web page over an archive (FastAPI + uvicorn + Jinja2).

Reads: /api/search, /api/similar/{id}, /api/images/{id}, thumbnails/PNG/overlays decoded on demand (cached by
content hash), /api/stats. Writes (token-protected when a token is set): POST /api/images and the page's
POST /upload. Only integer ids and the archive's own content hashes reach the filesystem. Uploads are limited in
bytes (checked while reading) and pixels (checked from the header before decoding); a bad upload is a 4xx with a
one-line reason and changes nothing. Models run one batch at a time (a lock); uvicorn serves the rest meanwhile.
"""
import hmac
import threading
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from nodecode.archive import render
from nodecode.archive.index import Indexer
from nodecode.archive.store import Archive
from nodecode.errors import NodecodeError
from nodecode.utils import pick_device

HERE = Path(__file__).resolve().parent


def create_app(archive_path, token: str | None = None, max_upload: int = 20 * 2**20, max_pixels: int = 40_000_000,
               device=None):
    archive = Archive(archive_path, write=True)
    indexer = Indexer(archive.codec_name, pick_device(device), max_pixels=max_pixels)
    model_lock = threading.Lock()
    app = FastAPI(title="nodecode archive", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.state.archive = archive

    @app.exception_handler(NodecodeError)
    async def _bad(request, exc):   # NodecodeError from a read: the id or the input is wrong
        status = 404 if str(exc).startswith("no image") else 400
        return JSONResponse({"error": str(exc)}, status_code=status)

    def check_token(req: Request, form_token: str | None = None) -> None:
        if token is None:
            return
        got = form_token or req.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(got.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong token")

    async def read_limited(f: UploadFile):
        chunks, n = [], 0
        while chunk := await f.read(1 << 16):
            n += len(chunk)
            if n > max_upload:
                raise HTTPException(413, f"upload larger than {max_upload} bytes")
            chunks.append(chunk)
        if not n:
            raise HTTPException(400, "empty upload")
        return b"".join(chunks)

    def ingest(name, data):
        name = Path(name or "upload").name[:200] or "upload"
        with model_lock:
            try:
                indexer.symbols_of(name, data)
            except NodecodeError as e:
                status = 413 if "too large" in str(e) else 400
                raise HTTPException(status, str(e)) from None
            row = indexer.rows([(name, data)])[0]
        return archive.put(row)

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        return JSONResponse({"error": str(exc.detail).splitlines()[0]}, status_code=exc.status_code)

    # -- API --------------------------------------------------------------------------------------------------
    @app.post("/api/images")
    async def upload(request: Request, file: UploadFile = File(...)):
        check_token(request)
        data = await read_limited(file)
        image_id, new = await run_in_threadpool(ingest, file.filename, data)
        return JSONResponse({"id": image_id, "new": new}, status_code=201 if new else 200)

    @app.get("/api/images/{image_id}")
    def info(image_id: int):
        return archive.image(image_id)

    @app.get("/api/images/{image_id}/thumb.jpg")
    def thumb(image_id: int):
        return Response(render.thumbnail(archive, image_id, indexer.codec), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/images/{image_id}/image.png")
    def full(image_id: int):
        return Response(render.png(archive, image_id, indexer.codec), media_type="image/png")

    @app.get("/api/images/{image_id}/overlay.png")
    def seg_overlay(image_id: int):
        with model_lock:
            data = render.overlay(archive, image_id, indexer)
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/images/{image_id}/file.ndc")
    def ndc(image_id: int):
        return Response(archive.ndc(image_id), media_type="application/octet-stream")

    @app.get("/api/search")
    def search(q: str = "", min_score: float = 0.0, limit: int = 50):
        return {"results": archive.search(q, min_score, max(1, min(limit, 500)))}

    @app.get("/api/similar/{image_id}")
    def similar(image_id: int, k: int = 10):
        return {"results": archive.similar(archive.embedding(image_id), max(1, min(k, 200)), exclude=image_id)}

    @app.get("/api/stats")
    def stats():
        return archive.stats()

    # -- page -------------------------------------------------------------------------------------------------
    @app.get("/")
    def page(request: Request, q: str = "", error: str = ""):
        hits = archive.search(q, 0.0, 60)
        return templates.TemplateResponse(request, "index.html", {"q": q, "hits": hits, "error": error[:200],
                                          "stats": archive.stats(), "need_token": token is not None})

    @app.get("/view/{image_id}")
    def view(request: Request, image_id: int):
        img = archive.image(image_id)
        near = archive.similar(archive.embedding(image_id), 8, exclude=image_id)
        return templates.TemplateResponse(request, "view.html", {"img": img, "near": near,
                                          "has_overlay": indexer.seg is not None})

    @app.post("/upload")
    async def page_upload(request: Request, file: UploadFile = File(...), token_field: str = Form("", alias="token")):
        check_token(request, token_field or None)
        data = await read_limited(file)
        image_id, _ = await run_in_threadpool(ingest, file.filename, data)
        return RedirectResponse(f"/view/{image_id}", status_code=303)

    return app


def serve(archive_path, host: str = "127.0.0.1", port: int = 8016, token: str | None = None,
          max_upload: int = 20 * 2**20, max_pixels: int = 40_000_000, device=None) -> None:
    import uvicorn
    app = create_app(archive_path, token, max_upload, max_pixels, device)
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print("nodecode: warning: serving beyond localhost without --token: anyone who reaches it can upload")
    uvicorn.run(app, host=host, port=port, log_level="warning", limit_concurrency=64, timeout_keep_alive=5)
