from flask import request
from flask_login import current_user
from sqlalchemy import select

from portal.accounts.models import User
from portal.audit import bp, services
from portal.extensions import db
from portal.locations.models import Location
from portal.privacy import PII_FIELDS, mask
from portal.web import can, int_arg, render, require, scope


@bp.app_context_processor
def _audit_helpers():
    def audit_value(entity_type, field, value):
        """Show a change as its reader knows it: identifiers masked for roles that may not see
        them, a location by its name and code (within the reader's area), custom fields by the
        ones that changed."""
        if field in PII_FIELDS and not can("individual.view_pii"):
            if isinstance(value, list):
                return " → ".join(mask(v) if v else "∅" for v in value)
            return mask(value)
        if field == "custom" and isinstance(value, list) and len(value) == 2 and all(
                isinstance(side, dict) or side is None for side in value):
            before, after = value[0] or {}, value[1] or {}
            return "; ".join(f"{key}: {_shown(before.get(key))} → {_shown(after.get(key))}"
                             for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key))
        if field == "location_id":
            value = [_place(v) for v in value] if isinstance(value, list) else _place(value)
        if isinstance(value, list) and len(value) == 2:
            return f"{_shown(value[0])} → {_shown(value[1])}"
        return value
    return {"audit_value": audit_value}


def _shown(value) -> str:
    return "∅" if value is None else str(value)


def _place(location_id):
    """A location of a change by name and code; outside the reader's area, only that."""
    location = db.session.get(Location, location_id) if isinstance(location_id, int) else None
    if location is None:
        return location_id
    if not scope().allows(location):
        return "a place outside your area"
    return f"{location.name} ({location.code})"


@bp.route("/")
@require("audit.view")
def index():
    filters = {
        "entity_type": request.args.get("entity_type", ""),
        "entity_id": request.args.get("entity_id", "").strip(),
        "action": request.args.get("action", ""),
        "actor_id": int_arg("actor_id", 0) or None,
    }
    if not scope().everything:
        # Users limited to some locations see only what they did themselves.
        filters["actor_id"] = current_user.id
    page = int_arg("page", 1, minimum=1)
    entries, has_more = services.search_entries(db.session, page=page, **filters)
    actors = {u.id: u for u in db.session.scalars(
        select(User).where(User.id.in_({e.actor_id for e in entries if e.actor_id})))}
    return render("audit/index.html", partial="audit/_entries.html", entries=entries,
                  actors=actors, filters=filters, page=page, has_more=has_more,
                  entity_types=services.entity_types(db.session),
                  users=db.session.scalars(select(User).order_by(User.name)).all()
                  if scope().everything else [])
