"""An application's Playground pane on its detail page: a conversation with its running endpoint, each
reply streamed in as server-sent events."""

import redis
from flask import make_response, render_template, request
from flask_login import current_user
from markupsafe import escape

from ..extensions import db
from ..services import ServiceError, live_logs, playground
from ..web import event_stream
from . import bp
from .forms import PlaygroundForm
from .routes import get_application


def _playground_pane(application):
    return render_template(
        "applications/_playground.html",
        application=application,
        playground_form=PlaygroundForm(formdata=None),
        history=playground.history(application, current_user),
    )


@bp.route("/<application_id>/playground", methods=["GET", "POST"])
def playground_pane(application_id):
    """The playground: GET the pane (it reloads itself when the status changes); POST a message, answered
    with the turn (the message and its reply, which then streams in) and a fresh form."""
    application = get_application(application_id)
    if request.method == "GET":
        return _playground_pane(application)
    form = PlaygroundForm()
    if form.validate():
        try:
            settings = form.settings()
        except ServiceError as e:
            form.stop.errors = [*form.stop.errors, str(e)]
        else:
            try:
                turn_id = playground.start_turn(application, current_user, form.message.data, settings)
            except ServiceError as e:
                form.message.errors.append(str(e))
            else:
                return render_template(
                    "applications/_playground_turn.html",
                    application=application,
                    message=form.message.data.strip(),
                    turn_id=turn_id,
                    form=PlaygroundForm(formdata=None, **form.kept()),
                )
    response = make_response(
        render_template("applications/_playground_form.html", application=application, form=form), 422
    )
    response.headers.update({"HX-Retarget": "#playground-form", "HX-Reswap": "outerHTML"})
    return response


@bp.get("/<application_id>/playground/<string(length=32):turn_id>")
def playground_reply(application_id, turn_id):
    """A turn's reply as server-sent events: "token" events (escaped text), then one "done" with how it went."""
    application = get_application(application_id)
    try:
        turn = playground.take_turn(application, current_user, turn_id)
    except (ServiceError, redis.RedisError) as e:
        turn, failed = None, playground.TurnEvent("done", stats={"error": str(e)})
    else:
        failed = playground.ENDED
    db.session.remove()  # no database connection held for the stream's whole life

    def stream():
        yield "retry: 60000\n\n"  # a turn streams once; the done event closes it
        for event in playground.stream_turn(turn) if turn else [failed]:
            if event.kind == "token":
                yield live_logs.sse_event(str(escape(event.text)), "token")
            else:
                stats = render_template("applications/_playground_stats.html", stats=event.stats)
                yield live_logs.sse_event(stats, "done")

    return event_stream(stream())


@bp.post("/<application_id>/playground/clear")
def playground_clear(application_id):
    """Forget the conversation (the key stays until it expires)."""
    application = get_application(application_id)
    playground.clear(application, current_user)
    return _playground_pane(application)
