"""The demo page at / and the API docs at /docs and /redoc, all served from local files (no CDN: works offline).

The Swagger UI and ReDoc bundles come from the `fastapi-offline` package, which ships them; the demo page is
plain HTML + JS in service/static/ that calls /info and /classify.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# Pages load only from this server: ReDoc's footer would fetch a logo from its CDN, and no page of ours should
# reach a third party (offline hosts, privacy). Swagger UI's page has one inline script; both libraries inline styles.
SAME_ORIGIN_ONLY = {"Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                               "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
                                               "worker-src 'self' blob:; connect-src 'self'"}
DOCS_ASSETS = "/static/docs"  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
OAUTH2_REDIRECT = "/docs/oauth2-redirect"


def docs_assets_dir() -> Path:
    """Where the installed fastapi-offline package keeps the Swagger UI and ReDoc bundles."""
    path = Path(str(files("fastapi_offline") / "static"))
    if not (path / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"Swagger UI assets missing under {path}; reinstall with `pip install fastapi-offline`")
    return path


def _same_origin(response: HTMLResponse) -> HTMLResponse:
    response.headers.update(SAME_ORIGIN_ONLY)
    return response


def install_web(app: FastAPI) -> None:
    """Mount the static files and add /, /docs and /redoc (the app must be built with docs_url=None)."""
    # Order matters: the more specific mount first, or /static would swallow /static/docs.
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=SAME_ORIGIN_ONLY)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _same_origin(get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"), title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + OAUTH2_REDIRECT, swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            # validatorUrl None: Swagger UI would otherwise ask validator.swagger.io about the schema
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None}))

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _same_origin(get_redoc_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"), title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False))
