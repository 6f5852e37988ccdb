"""Webhooks managed at run time (beside those of the YAML config)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..config import WebhookConfig
from ..wiring import Services
from .deps import ADMIN, ready

router = APIRouter(prefix="/v1/webhooks", dependencies=[ADMIN])


@router.get("", summary="webhooks added through the API (secrets are never shown)")
def list_webhooks(svc: Services = Depends(ready)) -> list[dict]:
    return svc.webhooks.list()


@router.post("", status_code=201, summary="add a webhook: signed POSTs on event start and end")
def add_webhook(cfg: WebhookConfig, svc: Services = Depends(ready)) -> dict:
    return svc.webhooks.add(cfg)


@router.delete("/{hook_id}", summary="remove a webhook")
def delete_webhook(hook_id: str, svc: Services = Depends(ready)) -> dict:
    svc.webhooks.remove(hook_id)
    return {"deleted": hook_id}
