"""Writing and reading the audit log.

A flush hook records every change to an ``Audited`` model, so a service cannot forget to;
services that change many rows at once with bulk statements call ``record`` themselves.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import event, inspect as sa_inspect, insert, select
from sqlalchemy.orm import Session

from portal.audit.models import AuditEntry, Audited
from portal.clock import now


def set_actor(session: Session, user_id: int | None) -> None:
    """Name who the following writes in this session are made by."""
    session.info["actor_id"] = user_id


def record(session: Session, *, action: str, entity_type: str, entity_id, summary: str = "",
           changes: dict | None = None, actor_id: int | None = None) -> None:
    """One entry, made by ``actor_id`` or else by the session's actor (``set_actor``)."""
    session.add(AuditEntry(
        at=now(), actor_id=actor_id or session.info.get("actor_id"), action=action, entity_type=entity_type,
        entity_id=str(entity_id), summary=summary[:255], changes=changes or {}))


def record_many(session: Session, *, action: str, entity_type: str, entries: list[tuple],
                actor_id: int | None) -> None:
    """Entries for rows a bulk statement wrote, in one insert (the flush hook never sees
    them): ``entries`` holds (entity id, summary, changes) for each row."""
    at = now()
    rows = [{"at": at, "actor_id": actor_id, "action": action, "entity_type": entity_type,
             "entity_id": str(entity_id), "summary": summary[:255], "changes": changes}
            for entity_id, summary, changes in entries]
    if rows:
        session.execute(insert(AuditEntry), rows)


def record_changes(session: Session, *, entity_type: str, changed: list[tuple]) -> None:
    """Update entries for rows a bulk statement changed, as the flush hook would write them:
    ``changed`` holds (entity id, summary, {field: (before, after)}) for each row."""
    record_many(session, action="update", entity_type=entity_type,
                actor_id=session.info.get("actor_id"),
                entries=[(entity_id, summary, {key: [_jsonable(before), _jsonable(after)]
                                               for key, (before, after) in changes.items()})
                         for entity_id, summary, changes in changed if changes])


def _jsonable(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (str, int, float, bool, dict, list)) or value is None:
        return value
    return str(value)


def _entity_type(obj) -> str:
    return type(obj).__name__.lower()


def _changes(obj, action: str) -> dict:
    state = sa_inspect(obj)
    mapper = state.mapper
    skip = obj.__audit_exclude__
    changes: dict = {}
    for attr in mapper.column_attrs:
        key = attr.key
        if key in skip or key == "id":
            continue
        if action == "create":
            value = getattr(obj, key)
            if value is not None:
                changes[key] = [None, _jsonable(value)]
        elif action == "delete":
            changes[key] = [_jsonable(state.attrs[key].loaded_value), None]
        else:
            hist = state.attrs[key].history
            if hist.has_changes():
                before = hist.deleted[0] if hist.deleted else None
                after = hist.added[0] if hist.added else None
                if before != after:
                    changes[key] = [_jsonable(before), _jsonable(after)]
    # Collections (a user's roles and locations, a role's grants) in the same shape for a
    # new row as for a changed one: what a user was given matters from the first entry.
    if action in ("create", "update"):
        for rel in mapper.relationships:
            if not rel.uselist or rel.key in skip or rel.viewonly:
                continue
            hist = state.attrs[rel.key].history
            added = sorted(str(v) for v in hist.added)
            removed = sorted(str(v) for v in hist.deleted)
            if added != removed:
                changes[rel.key] = {"added": added, "removed": removed}
    return changes


def _identity(obj) -> str:
    # New rows have their primary key set by now, though not yet their identity key.
    key = sa_inspect(obj).mapper.primary_key_from_instance(obj)
    return ":".join(str(k) for k in key)


def _label(obj) -> str:
    try:
        return str(obj)[:255]
    except Exception:  # an unloaded attribute during delete must not break the flush
        return ""


@event.listens_for(Session, "after_flush")
def _record_changes(session: Session, _flush_context) -> None:
    rows = []
    at = now()
    actor = session.info.get("actor_id")
    for action, objects in (("create", session.new), ("update", session.dirty),
                            ("delete", session.deleted)):
        for obj in objects:
            if not isinstance(obj, Audited):
                continue
            changes = _changes(obj, action)
            if action == "update" and not changes:
                continue
            rows.append({
                "at": at, "actor_id": actor, "action": action, "entity_type": _entity_type(obj),
                "entity_id": _identity(obj),
                "summary": _label(obj), "changes": changes,
            })
    if rows:
        session.connection().execute(insert(AuditEntry), rows)


AUDIT_SORTS = {"at": AuditEntry.at}


def search_entries(session: Session, *, entity_type: str = "", entity_id: str = "",
                   actor_id: int | None = None, action: str = "", page: int = 1, per_page: int = 50):
    query = select(AuditEntry)
    if entity_type:
        query = query.where(AuditEntry.entity_type == entity_type)
    if entity_id:
        query = query.where(AuditEntry.entity_id == str(entity_id))
    if actor_id:
        query = query.where(AuditEntry.actor_id == actor_id)
    if action:
        query = query.where(AuditEntry.action == action)
    query = query.order_by(AuditEntry.id.desc()).offset((page - 1) * per_page).limit(per_page + 1)
    rows = list(session.scalars(query))
    return rows[:per_page], len(rows) > per_page


def entity_types(session: Session) -> list[str]:
    return list(session.scalars(select(AuditEntry.entity_type).distinct().order_by(AuditEntry.entity_type)))
