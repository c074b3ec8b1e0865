"""Demo programs: an institution, a scheme, an individual and a household program, with
beneficiaries in every status."""
from __future__ import annotations

import random
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.locations.services import Scope
from portal.programs import services
from portal.programs.models import Beneficiary
from portal.programs.services import Criteria


def _move(session: Session, program, rng: random.Random, steps: list[tuple[str, str, int]]) -> None:
    """Change ``n`` beneficiaries along each (to_status, reason, n), picked at random."""
    everything = Scope(everything=True)
    for to_status, reason, n in steps:
        sources = [s for s, targets in services.TRANSITIONS.items() if to_status in targets]
        ids = list(session.scalars(select(Beneficiary.id).where(
            Beneficiary.program_id == program.id, Beneficiary.status.in_(sources))
            .order_by(Beneficiary.id)))
        for beneficiary_id in rng.sample(ids, min(n, len(ids))):
            services.change_status(session, beneficiary_id, to_status=to_status, reason=reason,
                                   actor_id=None, scope=everything)


def build(session: Session, rng: random.Random, village_ids: list[int]) -> dict:
    everything = Scope(everything=True)
    ministry = services.save_institution(
        session, None, code="MOGCDSW", kind="ministry",
        name="Ministry of Gender, Children, Disability and Social Welfare",
        description="Runs the national cash transfer programmes.")
    services.save_institution(session, None, code="WFP", name="World Food Programme",
                              kind="partner", description="Co-finances emergency top-ups.")
    scheme = services.save_scheme(session, None, code="NSSP",
                                  name="National Social Support Programme",
                                  description="Groups the social cash transfer and pension programmes.")
    year = date.today().year
    pension = services.save_program(
        session, None, code="OAP", name="Old-age social pension", beneficiary_kind="individual",
        description="A monthly pension for people aged 65 and over.",
        date_from=date(year, 1, 1), date_to=date(year + 2, 12, 31), max_beneficiaries=1500,
        institution_id=ministry.id, scheme_id=scheme.id, amount="15000", currency="MWK")
    services.activate_program(session, pension)
    services.enrol_by_criteria(session, pension.id, scope=everything,
                               criteria=Criteria(age_min=65), actor_id=None)
    _move(session, pension, rng, [("active", "Verified at community validation", 120),
                                  ("suspended", "Missed two pay days", 10),
                                  ("graduated", "Moved abroad", 5),
                                  ("removed", "Duplicate registration", 3)])

    sct = services.save_program(
        session, None, code="SCT", name="Social cash transfer", beneficiary_kind="group",
        description="Bi-monthly transfers to ultra-poor, labour-constrained households; "
                    "the household's primary recipient is paid.",
        date_from=date(year, 1, 1), date_to=date(year + 1, 12, 31), max_beneficiaries=400,
        institution_id=ministry.id, scheme_id=scheme.id, amount="24000", currency="MWK")
    services.activate_program(session, sct)
    services.save_program_field(session, sct, None, name="pay_point", label="Pay point",
                                type="text")
    preview = services.preview_criteria(session, sct, scope=everything,
                                        criteria=Criteria(household_min=5))
    if preview["new"] <= 400:
        services.enrol_by_criteria(session, sct.id, scope=everything,
                                   criteria=Criteria(household_min=5), actor_id=None)
    _move(session, sct, rng, [("active", "Targeted and validated", 60),
                              ("suspended", "Recipient not found at pay point", 6)])

    services.save_program(
        session, None, code="SCTU", name="Urban cash for work (planned)",
        beneficiary_kind="individual", description="Starts next year.", max_beneficiaries=300,
        institution_id=ministry.id, scheme_id=scheme.id, amount="8000", currency="MWK")
    session.flush()
    return {"programs": 3,
            "beneficiaries": services.taken_places(session, pension.id)
            + services.taken_places(session, sct.id)}
