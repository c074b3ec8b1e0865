from flask import request
from flask_login import current_user
from sqlalchemy import select

from portal.accounts.models import User
from portal.audit import bp, services
from portal.extensions import db
from portal.privacy import PII_FIELDS, mask
from portal.web import can, int_arg, render, require, scope


@bp.app_context_processor
def _audit_helpers():
    def audit_value(entity_type, field, value):
        """Show a change, masking identifiers for roles that may not see them."""
        if field in PII_FIELDS and not can("individual.view_pii"):
            if isinstance(value, list):
                return " → ".join(mask(v) if v else "∅" for v in value)
            return mask(value)
        if isinstance(value, list) and len(value) == 2:
            return f"{'∅' if value[0] is None else value[0]} → {'∅' if value[1] is None else value[1]}"
        return value
    return {"audit_value": audit_value}


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
