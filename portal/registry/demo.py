"""Demo people: households of Malawian and Zambian names with plausible ages, deterministic
from the random generator, inserted in bulk.

``generate`` is shared with ``bench/population.py``, which makes a million people the same way.
"""
from __future__ import annotations

import random
from datetime import date, timedelta
from itertools import accumulate

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from portal.registry.models import Group, GroupMember, Individual
from portal.registry.validation import name_key

REFERENCE_DAY = date(2026, 1, 1)  # ages are counted from here so the data never drifts

# Most common first: frequencies fall off like real surname lists (Banda, Phiri, Mwale ...).
SURNAMES = (
    "Banda Phiri Mwale Tembo Chirwa Nyirenda Zulu Mbewe Sakala Lungu Daka Ngoma Mvula Kamanga "
    "Gondwe Mhango Kumwenda Msiska Chisi Jere Moyo Kachingwe Chimwaza Kalua Mwanza Chikwanha "
    "Mkandawire Nkhoma Chiumia Munthali Kaunda Mulenga Bwalya Chanda Mumba Musonda Tembwe "
    "Chileshe Kabwe Mutale Zimba Simwanza Hamoonga Mweemba Hichilema Siame Sichone Nkhata "
    "Chavula Kaunda Mkwezalamba Mtambo Kanyenda Chibwana Kapalamula Makwinja Chimombo Gama "
    "Mazibuko Chakwera Mutharika Muluzi Msowoya Chiwaula Kumbuyo Nkosi Chipeta Mbalame Mpinganjira"
).split()
FEMALE_NAMES = (
    "Chikondi Mphatso Thandiwe Chisomo Mercy Grace Tiyamike Alinafe Madalitso Tamanda Esther "
    "Memory Chimwemwe Faith Ruth Agnes Linda Mary Loveness Dorothy Tionge Kondwani Tawonga "
    "Thokozani Patricia Beatrice Charity Edina Catherine Chipo Mwiza Natasha Towela Bupe Chilufya "
    "Mutinta Namakau Precious Nomsa Zione Eneless Fanny Rhoda Idah Triza Maness Chiyembekezo"
).split()
MALE_NAMES = (
    "Kondwani Blessings Limbani Chisomo Mphatso Yamikani Joseph John Peter James Wongani Chimwemwe "
    "Emmanuel Innocent Mike Gift Francis Charles Moses Lusungu Tadala Dalitso Kumbukani Mabvuto "
    "Mwayi Chifundo Bright Gabriel Martin Patrick Mulenga Chanda Mwila Bwalya Musonda Lubinda "
    "Mutale Kelvin Brian Felix Dickson Steven Harold Isaac Davie Godfrey Lameck Wisdom"
).split()
SYLLABLES = ("ba chi ka lo mwa nji zi la ngo tu ma we sa ndu ko bi ya mbe po li gwe ta nya "
             "ru mu ku nkho pe").split()


def _cumulative(n: int, s: float = 1.0) -> list[float]:
    """Cumulative Zipf weights for ranks 1..n."""
    return list(accumulate(1 / (rank ** s) for rank in range(1, n + 1)))


_SURNAME_WEIGHTS = _cumulative(len(SURNAMES), 0.9)
_FEMALE_WEIGHTS = _cumulative(len(FEMALE_NAMES), 0.8)
_MALE_WEIGHTS = _cumulative(len(MALE_NAMES), 0.8)


def surname(rng: random.Random) -> str:
    """A surname: usually a common one, sometimes one from the long tail."""
    if rng.random() < 0.25:
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3, 3, 4)))).title()
    return rng.choices(SURNAMES, cum_weights=_SURNAME_WEIGHTS)[0]


def first_name(rng: random.Random, sex: str) -> str:
    if sex == "F":
        return rng.choices(FEMALE_NAMES, cum_weights=_FEMALE_WEIGHTS)[0]
    return rng.choices(MALE_NAMES, cum_weights=_MALE_WEIGHTS)[0]


def national_id(n: int) -> str:
    """A unique, unsequential-looking 8-digit number for the n-th ID (a bijection mod 10^8)."""
    return f"MW{(n * 48_271 + 12_345_678) % 100_000_000:08d}"


def _birth(rng: random.Random, age: int) -> date:
    return REFERENCE_DAY - timedelta(days=age * 365 + rng.randrange(365))


def household_sizes(rng: random.Random, households: int, people: int) -> list[int]:
    """Household sizes averaging people/households (1 to 12), summing exactly to people."""
    mean = people / households
    sizes = [max(1, min(12, round(rng.gauss(mean, 2.0)))) for _ in range(households)]
    diff = people - sum(sizes)
    while diff:
        i = rng.randrange(households)
        if diff > 0 and sizes[i] < 12:
            sizes[i] += 1
            diff -= 1
        elif diff < 0 and sizes[i] > 1:
            sizes[i] -= 1
            diff += 1
    return sizes


def generate(rng: random.Random, sizes: list[int], village_ids: list[int], *, first_individual_id: int,
             first_group_id: int, first_id_number: int = 1, code_prefix: str = "HH"):
    """Yield (individual rows, group rows, member rows) per household: dicts for bulk inserts,
    with explicit ids so members can point at people before they are inserted."""
    person_id = first_individual_id
    id_number = first_id_number
    for h, size in enumerate(sizes):
        group_id = first_group_id + h
        village = village_ids[rng.randrange(len(village_ids))]
        family = surname(rng)
        head_sex = "M" if rng.random() < 0.7 else "F"
        head_age = rng.randint(20, 75)
        members: list[tuple[str, str, int]] = [(head_sex, "head", head_age)]
        if size > 1 and rng.random() < 0.75:
            members.append(("F" if head_sex == "M" else "M", "spouse",
                            max(18, head_age + rng.randint(-8, 5))))
        while len(members) < size:
            roll = rng.random()
            if roll < 0.8:
                members.append((rng.choice("FM"), "child", rng.randint(0, max(0, min(25, head_age - 16)))))
            elif roll < 0.9 and head_age < 55:
                members.append((rng.choice("FM"), "parent", min(100, head_age + rng.randint(18, 30))))
            elif roll < 0.95:
                members.append((rng.choice("FM"), "grandparent" if head_age < 50 else "other_relative",
                                rng.randint(50, 90)))
            else:
                members.append((rng.choice("FM"), "not_related", rng.randint(5, 60)))
        people, links = [], []
        for sex, role, age in members:
            first = first_name(rng, sex)
            last = family if role != "not_related" and rng.random() < 0.92 else surname(rng)
            nid = None
            if age >= 16:
                nid = national_id(id_number)
                id_number += 1
            phone = None
            if age >= 18 and rng.random() < 0.55:
                phone = f"+265{rng.choice('98')}{rng.choice('89')}{rng.randrange(10_000_000):07d}"
            people.append({
                "id": person_id, "first_name": first, "middle_name": None, "last_name": last,
                "name_key": name_key(first, None, last), "sex": sex, "birth_date": _birth(rng, age),
                "national_id_type": "national_id" if nid else None, "national_id": nid, "phone": phone,
                "location_id": village, "custom": {}, "version": 1,
            })
            links.append({"group_id": group_id, "individual_id": person_id, "group_kind": "household",
                          "role": role})
            person_id += 1
        group = {"id": group_id, "code": f"{code_prefix}-{group_id:07d}", "name": f"{family} household",
                 "kind": "household", "location_id": village, "primary_recipient_id": people[0]["id"],
                 "version": 1}
        yield people, group, links


def build(session: Session, rng: random.Random, village_ids: list[int], *, households: int = 800,
          people: int = 3_600) -> dict:
    """A few thousand people in households, plus two cooperatives."""
    if not village_ids:
        return {}
    from portal.registry.services import ensure_member_roles

    ensure_member_roles(session)
    first_individual_id = (session.scalar(select(func.max(Individual.id))) or 0) + 1
    first_group_id = (session.scalar(select(func.max(Group.id))) or 0) + 1
    individuals, groups, members = [], [], []
    for person_rows, group, links in generate(rng, household_sizes(rng, households, people), village_ids,
                                              first_individual_id=first_individual_id,
                                              first_group_id=first_group_id):
        individuals += person_rows
        groups.append(group)
        members += links
    session.execute(insert(Individual), individuals)
    session.execute(insert(Group), groups)
    session.execute(insert(GroupMember), members)
    # Two cooperatives of adults from the first villages.
    coop_rows, coop_members = [], []
    adults = [p for p in individuals if p["national_id"]][:40]
    for n, chunk in enumerate((adults[:20], adults[20:40]), start=1):
        if not chunk:
            continue
        gid = first_group_id + len(groups) + n - 1
        coop_rows.append({"id": gid, "code": f"COOP-{n:03d}", "name": f"Farmers cooperative {n}",
                          "kind": "cooperative", "location_id": chunk[0]["location_id"], "version": 1})
        coop_members += [{"group_id": gid, "individual_id": p["id"], "group_kind": "cooperative",
                          "role": "member"} for p in chunk]
    if coop_rows:
        session.execute(insert(Group), coop_rows)
        session.execute(insert(GroupMember), coop_members)
    advance_sequences(session)
    session.flush()
    return {"individuals": len(individuals), "households": len(groups), "cooperatives": len(coop_rows)}


def advance_sequences(session: Session) -> None:
    """PostgreSQL: rows inserted with explicit ids leave the id sequences behind; move them on."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for table in ("individual", "group"):
        session.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), "
                             f"(SELECT COALESCE(MAX(id), 1) FROM \"{table}\"))"))
