"""/api/v1/models: the model registry (everyone reads it; admins change it, a member gets 403), and the
serving configuration recommended for a model."""

from flask import g, url_for
from spectree import Response

from ..services import applications, registry
from . import ADMIN_BODY_ERRORS, ADMIN_ERRORS, ERRORS, bp, spec
from .schemas import ModelIn, ModelList, ModelOut, Problem, RecommendationOut

REGISTRY = ["registry"]


def _model_out(model) -> ModelOut:
    return ModelOut.model_validate(model, from_attributes=True)


@bp.get("/models")
@spec.validate(resp=Response(HTTP_200=ModelList, **ERRORS), tags=REGISTRY)
def list_models():
    """The model registry: what applications can serve."""
    return ModelList(items=[_model_out(m) for m in registry.list_models()])


@bp.get("/models/<int:model_id>")
@spec.validate(resp=Response(HTTP_200=ModelOut, **ERRORS), tags=REGISTRY)
def get_model(model_id):
    """One registry model."""
    return _model_out(registry.get_model(model_id))


@bp.get("/models/<int:model_id>/recommendation")
@spec.validate(resp=Response(HTTP_200=RecommendationOut, HTTP_409=Problem, **ERRORS), tags=REGISTRY)
def model_recommendation(model_id):
    """The serving configuration recommended for a model (what the form's Apply fills in), and why."""
    found = applications.recommendation_for(registry.get_model(model_id))
    return RecommendationOut(
        config=found.as_config(),
        fits=found.fits,
        model_memory_bytes=found.model_memory_bytes,
        kv_cache_per_sequence_bytes=found.kv_cache_per_sequence_bytes,
        available_memory_bytes=found.available_memory_bytes,
        cpu_cores=found.cpu_cores,
        decided_by=dict(found.bounds),
        reasoning=found.reasoning,
    )


@bp.post("/models")
@spec.validate(
    json=ModelIn,
    resp=Response(HTTP_201=ModelOut, HTTP_409=Problem, **ADMIN_BODY_ERRORS),
    tags=REGISTRY,
)
def create_model(json: ModelIn):
    """Register a model (admins). A transformers model's directory is checked on this host."""
    model = registry.create_model(json.model_dump(), acting=g.api_user)
    return _model_out(model), 201, {"Location": url_for(".get_model", model_id=model.id)}


@bp.put("/models/<int:model_id>")
@spec.validate(
    json=ModelIn,
    resp=Response(HTTP_200=ModelOut, HTTP_409=Problem, **ADMIN_BODY_ERRORS),
    tags=REGISTRY,
)
def update_model(model_id, json: ModelIn):
    """Replace a registry model's fields (admins)."""
    return _model_out(registry.update_model(model_id, json.model_dump(), acting=g.api_user))


@bp.delete("/models/<int:model_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_409=Problem, **ADMIN_ERRORS), tags=REGISTRY)
def delete_model(model_id):
    """Remove a model from the registry (admins); refused while applications use it."""
    registry.delete_model(model_id, acting=g.api_user)
    return "", 204
