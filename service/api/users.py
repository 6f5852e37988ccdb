"""Users, their roles, passwords and API keys (admin only); ``amvad user`` does the same on the command line."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from amvad.runtime.errors import Conflict

from ..users import User
from ..wiring import Services
from .deps import ADMIN, services

router = APIRouter(prefix="/v1/users", dependencies=[ADMIN])
Role = Literal["viewer", "admin"]


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    role: Role
    password: SecretStr | None = Field(None, max_length=1024, description="none: the user only has API keys")


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    password: SecretStr | None = Field(None, max_length=1024, description="a new password (logs the user out)")


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field("", max_length=64, description="what the key is for (a machine's name)")


def keep_an_admin(svc: Services, after: list[User]) -> None:
    """Without the ``api_key`` setting, a change that leaves no admin (or no user: an open service) is
    refused; ``amvad user`` on the machine itself can still do it."""
    if svc.auth.admin_key is None and not any(u.role == "admin" for u in after):
        raise Conflict("this would leave no admin user (and without api_key nobody could manage the service); "
                       "add or promote another admin first")


def _password(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


@router.get("", summary="every user: name, role, whether they have a password, their API keys (never a secret)")
def list_users(svc: Services = Depends(services)) -> list[dict]:
    return [u.public() for u in svc.auth.users.list()]


@router.post("", status_code=201, summary="add a user (role viewer or admin)")
def add_user(body: NewUser, svc: Services = Depends(services)) -> dict:
    keep_an_admin(svc, [*svc.auth.users.list(), User(body.name, body.role)])
    return svc.auth.users.add(body.name, body.role, _password(body.password)).public()


@router.patch("/{name}", summary="change a user's role or password")
def patch_user(name: str, body: UserPatch, svc: Services = Depends(services)) -> dict:
    users = svc.auth.users
    if body.role is not None:
        keep_an_admin(svc, [User(u.name, body.role if u.name == name else u.role) for u in users.list()])
        users.set_role(name, body.role)
    if body.password is not None:
        users.set_password(name, _password(body.password))
        svc.auth.sessions.drop_user(name)
    return users.get(name).public()


@router.delete("/{name}", summary="remove a user (their sessions and API keys end at once)")
def delete_user(name: str, svc: Services = Depends(services)) -> dict:
    users = svc.auth.users
    users.get(name)
    keep_an_admin(svc, [u for u in users.list() if u.name != name])
    users.remove(name)
    svc.auth.sessions.drop_user(name)
    return {"deleted": name}


@router.post("/{name}/keys", status_code=201, summary="a new API key of the user, shown this once (only its hash "
             "is kept)")
def add_key(name: str, body: NewKey | None = None, svc: Services = Depends(services)) -> dict:
    key, secret = svc.auth.users.add_key(name, body.label if body else "")
    return {**key.public(), "user": name, "key": secret}


@router.delete("/{name}/keys/{key_id}", summary="revoke one of the user's API keys")
def delete_key(name: str, key_id: str, svc: Services = Depends(services)) -> dict:
    svc.auth.users.remove_key(name, key_id)
    return {"deleted": key_id}
