"""The built-in pages: the live page (every camera's score curve, heatmap and events in one browser tab) and
the review page (the events of every camera with their clips and score curves, and feedback)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from .deps import VIEWER_PAGE

STATIC = Path(__file__).resolve().parents[1] / "static"
PAGE = STATIC / "live.html"
REVIEW_PAGE = STATIC / "review.html"
router = APIRouter(dependencies=[VIEWER_PAGE])


@router.get("/", response_class=HTMLResponse, summary="live page")
def live_page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text())


@router.get("/review", response_class=HTMLResponse, summary="events review page")
def review_page() -> HTMLResponse:
    """Reads only the event endpoints (list, cameras, snapshot, clip, score curve) and posts feedback."""
    return HTMLResponse(REVIEW_PAGE.read_text())
