"""The live page: every camera's score curve, heatmap and events in one browser tab."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from .deps import require_key

PAGE = Path(__file__).resolve().parents[1] / "static" / "live.html"
router = APIRouter(dependencies=[Depends(require_key)])


@router.get("/", response_class=HTMLResponse, summary="live page")
def live_page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text())
