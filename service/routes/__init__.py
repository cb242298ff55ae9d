"""The HTTP routes, one module per resource; each route is thin: its dependencies, one core call, the answer."""

from fastapi import APIRouter

from . import attributes, docs, edit, generate, model, operations

ROUTERS: tuple[APIRouter, ...] = (
    operations.router,
    docs.router,
    model.router,
    attributes.router,
    generate.router,
    edit.router,
)
# admin.router: only with an API key (service/app.py)
