"""A deterministic synthetic population of Jinan residents, for demos, load tests and fixtures.

Nothing here is real: identity numbers have the right shape and check character but are drawn at
random, names of employers and shops are invented. What *is* realistic is the structure: every
citizen gets a value for every catalog item, and the values hang together (the contribution history
has the gaps that the insured status implies, property count matches the property list, fund-paid
plus self-paid equals the total of every hospital stay, the dishonest-debtor flag matches its list...).

Determinism rules, so that fixtures and benchmarks are reproducible:

- randomness comes only from ``random.Random`` instances seeded from ``(seed, index)``: citizen *i*
  is the same whether 5 or 100,000 citizens are generated (prefix stability);
- dates are computed from the ``as_of`` parameter, never from the clock;
- the generator's own draws never depend on the catalog, so adding an item to the catalog does not
  change the values of the others. Items the generator does not know by id get a generic value of
  their declared type from a per-(seed, citizen, item) stream.

Values are already in the JSON wire encoding of :mod:`veilgate_server.core.catalog` (decimals as
strings, dates as ``YYYY-MM-DD``, records as lists of dicts) and pass ``validate_value``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from veilgate_server.core.catalog import Catalog, CatalogItem, DepartmentId, FieldSpec, ItemId

__all__ = [
    "DEFAULT_AS_OF",
    "SeedCitizen",
    "SeedRecord",
    "citizen_ids",
    "generate_population",
    "id_check_character",
]

DEFAULT_AS_OF: Final = date(2026, 10, 31)


@dataclass(frozen=True, slots=True)
class SeedRecord:
    citizen_id: str
    item_id: ItemId
    department: DepartmentId
    as_of: date
    value: object  # JSON-encoded per the catalog's wire contract


@dataclass(frozen=True, slots=True)
class SeedCitizen:
    citizen_id: str
    records: tuple[SeedRecord, ...]


# --- identity numbers ------------------------------------------------------------------------------

_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)  # 2**(17-i) mod 11
_ID_CHECK: Final = "10X98765432"

# (area code, district enum value, Chinese name, relative population weight)
_DISTRICTS: Final = (
    ("370102", "lixia", "历下区", 11),
    ("370103", "shizhong", "市中区", 11),
    ("370104", "huaiyin", "槐荫区", 9),
    ("370105", "tianqiao", "天桥区", 9),
    ("370112", "licheng", "历城区", 13),
    ("370113", "changqing", "长清区", 6),
    ("370114", "zhangqiu", "章丘区", 10),
    ("370115", "jiyang", "济阳区", 6),
    ("370116", "laiwu", "莱芜区", 9),
    ("370117", "gangcheng", "钢城区", 3),
    ("370124", "pingyin", "平阴县", 4),
    ("370126", "shanghe", "商河县", 6),
)
_RURAL_DISTRICTS: Final = frozenset({"changqing", "zhangqiu", "jiyang", "laiwu", "gangcheng", "pingyin", "shanghe"})
_DISTRICT_INDEXES: Final = tuple(range(len(_DISTRICTS)))
_DISTRICT_CUM: Final = tuple(sum(d[3] for d in _DISTRICTS[: i + 1]) for i in range(len(_DISTRICTS)))


def id_check_character(body: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits of a resident identity number."""
    total = sum(int(digit) * weight for digit, weight in zip(body, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a non-leap year
        return day.replace(year=day.year - years, day=28)


@dataclass(frozen=True, slots=True)
class _IdDraw:
    citizen_id: str
    district: int
    birth: date


def _draw_id(rng: random.Random, first_birth: int, birth_span: int, seen: set[str]) -> _IdDraw:
    """Area code, birth date (ages 20-70), sequence and check; redrawn on a (rare) collision."""
    while True:
        district = rng.choices(_DISTRICT_INDEXES, cum_weights=_DISTRICT_CUM)[0]
        birth = date.fromordinal(first_birth + rng.randrange(birth_span))
        sequence = rng.randrange(1, 1000)  # odd for men, even for women
        body = f"{_DISTRICTS[district][0]}{birth.year:04d}{birth.month:02d}{birth.day:02d}{sequence:03d}"
        citizen_id = body + id_check_character(body)
        if citizen_id not in seen:
            seen.add(citizen_id)
            return _IdDraw(citizen_id, district, birth)


def _birth_range(as_of: date) -> tuple[int, int]:
    """First ordinal and span of birth dates for ages 20 to 70 inclusive on ``as_of``."""
    first = _years_before(as_of, 71).toordinal() + 1
    last = _years_before(as_of, 20).toordinal()
    return first, last - first + 1


def _citizen_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{index}")


def citizen_ids(count: int, *, seed: int, as_of: date = DEFAULT_AS_OF) -> list[str]:
    """The identity numbers :func:`generate_population` gives its first ``count`` citizens."""
    first, span = _birth_range(as_of)
    seen: set[str] = set()
    return [_draw_id(_citizen_rng(seed, index), first, span, seen).citizen_id for index in range(count)]


def generate_population(
    catalog: Catalog, *, citizens: int, seed: int, as_of: date = DEFAULT_AS_OF
) -> Iterator[SeedCitizen]:
    """Yield ``citizens`` synthetic citizens one by one, each with a record for every catalog item."""
    if citizens < 0:
        raise ValueError("citizens must not be negative")
    calendar = _Calendar(as_of)
    first, span = _birth_range(as_of)
    seen: set[str] = set()
    items = tuple(catalog.items.values())
    for index in range(citizens):
        rng = _citizen_rng(seed, index)
        drawn = _draw_id(rng, first, span, seen)
        known, dept_dates = _citizen_values(rng, drawn, calendar)
        records: list[SeedRecord] = []
        for item in items:
            dept_date = dept_dates.get(item.department)
            if dept_date is None:
                dept_rng = random.Random(f"{seed}:{index}:{item.department}")
                dept_date = as_of - timedelta(days=dept_rng.randint(3, 20))
                dept_dates[item.department] = dept_date
            value = known.get(item.id, _MISSING)
            if value is _MISSING:
                value = _generic_value(random.Random(f"{seed}:{index}:{item.id}"), item, calendar)
            records.append(SeedRecord(drawn.citizen_id, item.id, item.department, dept_date, value))
        yield SeedCitizen(drawn.citizen_id, tuple(records))


_MISSING: Final = object()


# --- helpers ---------------------------------------------------------------------------------------


class _Calendar:
    """Month starts and date strings relative to ``as_of``, computed once per population."""

    __slots__ = ("as_of", "as_of_ord", "history_months", "last_year")

    def __init__(self, as_of: date) -> None:
        self.as_of = as_of
        self.as_of_ord = as_of.toordinal()
        # The latest month in a monthly history is the one that was complete at least ten days
        # before as_of, so it is also complete on each department's (slightly earlier) data date.
        anchor = as_of - timedelta(days=40)
        year, month = anchor.year, anchor.month
        months: list[tuple[str, int, int, int]] = []  # newest first: (iso, year, month, ordinal of the 1st)
        for _ in range(48):
            first = date(year, month, 1)
            months.append((first.isoformat(), year, month, first.toordinal()))
            year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        self.history_months = tuple(months)
        self.last_year = as_of.year - 1


def _iso(ordinal: int) -> str:
    return date.fromordinal(ordinal).isoformat()


def _cny(cents: int) -> str:
    """Integer cents as a wire decimal with two fraction digits."""
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def _pick(rng: random.Random, options: tuple[str, ...], cum_weights: tuple[int, ...]) -> str:
    return rng.choices(options, cum_weights=cum_weights)[0]


def _cum(*weights: int) -> tuple[int, ...]:
    total = 0
    out: list[int] = []
    for weight in weights:
        total += weight
        out.append(total)
    return tuple(out)


def _monthly_tax_cents(taxable_cents: int) -> int:
    """Monthly withholding on wage income with the 2019 rate table (monthly equivalent)."""
    if taxable_cents <= 0:
        return 0
    for upper, rate, quick in _TAX_BRACKETS:
        if taxable_cents <= upper:
            return taxable_cents * rate // 100 - quick
    return taxable_cents * 45 // 100 - 15_160_00


_TAX_BRACKETS: Final = (
    (3_000_00, 3, 0),
    (12_000_00, 10, 210_00),
    (25_000_00, 20, 1_410_00),
    (35_000_00, 25, 2_660_00),
    (55_000_00, 30, 4_410_00),
    (80_000_00, 35, 7_160_00),
)

# Department data dates: how many days before as_of each source's extract typically is.
_DEPARTMENT_LAGS: Final = (
    ("household_registration", 1, 7),
    ("social_insurance", 3, 10),
    ("housing_fund", 3, 10),
    ("taxation", 3, 10),
    ("real_estate", 2, 14),
    ("market_regulation", 1, 7),
    ("civil_affairs", 3, 14),
    ("traffic_police", 1, 5),
    ("medical_insurance", 5, 20),
    ("court_enforcement", 1, 10),
    ("education", 20, 60),
    ("public_utilities", 3, 15),
)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_CONTRIBUTION_FLOOR: Final = 4_416_00  # Shandong 2025 contribution base floor and ceiling (approx.)
_CONTRIBUTION_CAP: Final = 22_080_00
_FUND_FLOOR: Final = 2_200_00
_FUND_CAP: Final = 28_000_00

_EMPLOYER_PREFIX: Final = ("山东", "济南", "山东省", "济南市")
_EMPLOYER_CORE: Final = _words("鲁信 泉城 海右 历山 明湖 舜耕 趵突 千佛 华山 齐鲁 黄河 玉泉 泺源 东岳")
_EMPLOYER_TRADE: Final = _words(
    "科技 商贸 建设工程 物流 餐饮管理 信息技术 医药 机械制造 文化传媒 物业服务 电子 新能源 食品 汽车销售服务"
)
_EMPLOYER_FORM: Final = ("有限公司", "有限责任公司", "股份有限公司", "集团有限公司")
_ROADS: Final = _words(
    "经十路 泉城路 解放路 历山路 二环东路 舜耕路 英雄山路 工业南路 花园路 北园大街 明湖路 经七路 "
    "纬二路 旅游路 顺河街 和平路 文化西路 山大路"
)
_BANKS: Final = _words(
    "中国工商银行股份有限公司济南分行 中国建设银行股份有限公司济南分行 中国银行股份有限公司济南分行 "
    "中国农业银行股份有限公司济南分行 交通银行股份有限公司济南分行 齐鲁银行股份有限公司 "
    "招商银行股份有限公司济南分行 恒丰银行股份有限公司济南分行"
)
_HOSPITALS: Final = (
    ("H37010200011", "山东大学齐鲁医院"),
    ("H37010200015", "山东省立医院"),
    ("H37010200021", "山东第一医科大学第一附属医院"),
    ("H37010200034", "济南市中心医院"),
    ("H37010300007", "济南市第四人民医院"),
    ("H37010400012", "济南市第三人民医院"),
    ("H37010500019", "济南市人民医院"),
    ("H37011200006", "济南市历城区人民医院"),
    ("H37011400003", "济南市章丘区人民医院"),
    ("H37011600008", "济南市莱芜人民医院"),
    ("H37012600002", "商河县人民医院"),
)
_DIAGNOSES: Final = _words(
    "infectious neoplasm endocrine_metabolic mental_behavioural nervous_system circulatory "
    "respiratory digestive musculoskeletal genitourinary pregnancy_childbirth injury_poisoning other"
)
_DIAGNOSIS_YOUNG: Final = _cum(4, 3, 3, 3, 4, 5, 16, 16, 8, 8, 14, 12, 4)
_DIAGNOSIS_OLD: Final = _cum(3, 12, 8, 2, 9, 26, 14, 10, 8, 4, 0, 4, 0)
_DAILY_COST: Final = {"neoplasm": 2_600_00, "circulatory": 2_200_00, "injury_poisoning": 1_900_00}
_BRANDS: Final = _words("大众 丰田 本田 比亚迪 吉利 长安 哈弗 别克 日产 特斯拉 理想 奇瑞 五菱")
_MOTORCYCLE_BRANDS: Final = _words("豪爵 雅马哈 五羊本田 钱江 春风")
_SHOPS: Final = _words("便利店 餐馆 五金店 理发店 水果店 汽车修理部 家电维修部 小吃店")
_PLATE_LETTERS: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ"
_UNIVERSITIES: Final = _words(
    "山东大学 山东师范大学 济南大学 山东财经大学 齐鲁工业大学 山东建筑大学 山东中医药大学 "
    "山东第一医科大学 山东交通学院 山东政法学院 中国海洋大学 青岛大学"
)
_COLLEGES: Final = _words(
    "济南职业学院 山东劳动职业技术学院 山东电子职业技术学院 济南工程职业技术学院 山东商业职业技术学院 山东水利职业学院"
)
_SENIOR_SCHOOLS: Final = _words(
    "山东省实验中学 济南外国语学校 山东师范大学附属中学 济南第一中学 济南第三中学 历城第二中学 章丘区第四中学"
)
_COURTS: Final = {
    "lixia": ("0102", "济南市历下区人民法院"),
    "shizhong": ("0103", "济南市市中区人民法院"),
    "huaiyin": ("0104", "济南市槐荫区人民法院"),
    "tianqiao": ("0105", "济南市天桥区人民法院"),
    "licheng": ("0112", "济南市历城区人民法院"),
    "changqing": ("0113", "济南市长清区人民法院"),
    "zhangqiu": ("0181", "济南市章丘区人民法院"),
    "jiyang": ("0125", "济南市济阳区人民法院"),
    "laiwu": ("1202", "济南市莱芜区人民法院"),
    "gangcheng": ("1203", "济南市钢城区人民法院"),
    "pingyin": ("0124", "平阴县人民法院"),
    "shanghe": ("0126", "商河县人民法院"),
}
_USCC_CHARS: Final = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS: Final = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def _credit_code(rng: random.Random, kind: str, area: str) -> str:
    """A unified social credit code (GB 32100) with a correct final check character."""
    org = "".join(rng.choice(_USCC_CHARS) for _ in range(9))
    body = f"{kind}{area}{org}"
    total = sum(_USCC_CHARS.index(ch) * w for ch, w in zip(body, _USCC_WEIGHTS, strict=True))
    return body + _USCC_CHARS[(31 - total % 31) % 31]


def _company_name(rng: random.Random) -> str:
    return (
        rng.choice(_EMPLOYER_PREFIX)
        + rng.choice(_EMPLOYER_CORE)
        + rng.choice(_EMPLOYER_TRADE)
        + rng.choice(_EMPLOYER_FORM)
    )


# --- the citizen -----------------------------------------------------------------------------------

_EDUCATION_LEVELS: Final = _words(
    "primary junior_secondary senior_secondary secondary_vocational junior_college bachelor master doctorate"
)
_GRADUATION_AGE: Final = (12, 15, 18, 18, 21, 22, 25, 29)
_EDUCATION_YOUNG: Final = _cum(0, 4, 15, 10, 25, 35, 10, 1)
_EDUCATION_MIDDLE: Final = _cum(2, 20, 22, 10, 20, 21, 4, 1)
_EDUCATION_OLD: Final = _cum(12, 38, 25, 8, 10, 6, 1, 0)
_SALARY_BY_EDUCATION: Final = (
    3_900_00,
    4_300_00,
    5_000_00,
    5_200_00,
    6_300_00,
    8_200_00,
    11_500_00,
    14_000_00,
)


def _citizen_values(
    rng: random.Random, drawn: _IdDraw, cal: _Calendar
) -> tuple[dict[str, object], dict[DepartmentId, date]]:
    """Every known item's value for one citizen, plus each department's data date."""
    v: dict[str, object] = {}
    as_ord = cal.as_of_ord
    dept_dates = {
        DepartmentId(dep): cal.as_of - timedelta(days=rng.randint(lo, hi)) for dep, lo, hi in _DEPARTMENT_LAGS
    }
    birth = drawn.birth
    birth_ord = birth.toordinal()
    age = cal.as_of.year - birth.year - ((cal.as_of.month, cal.as_of.day) < (birth.month, birth.day))
    male = int(drawn.citizen_id[16]) % 2 == 1
    id_area = _DISTRICTS[drawn.district][0]

    # household registration
    district = drawn.district if rng.random() < 0.8 else rng.choices(_DISTRICT_INDEXES, cum_weights=_DISTRICT_CUM)[0]
    district_name = _DISTRICTS[district][1]
    district_zh = _DISTRICTS[district][2]
    rural = rng.random() < (0.45 if district_name in _RURAL_DISTRICTS else 0.08)
    v["household_registration.hukou_type"] = "rural" if rural else "urban"
    v["household_registration.registered_district"] = district_name
    settled_ord = birth_ord if rng.random() < 0.35 else rng.randint(birth_ord + 16 * 365, as_ord - 30)
    v["household_registration.registration_date"] = _iso(settled_ord)

    # civil status first: it shapes the household
    legal = 22 if male else 20
    marital = "unmarried"
    if age >= legal:
        r = rng.random()
        if age < 25:
            marital = "married" if r < 0.15 else "unmarried"
        elif age < 35:
            marital = "unmarried" if r < 0.35 else "married" if r < 0.95 else "divorced"
        elif age < 60:
            marital = "unmarried" if r < 0.06 else "married" if r < 0.90 else "divorced" if r < 0.99 else "widowed"
        else:
            marital = "unmarried" if r < 0.02 else "married" if r < 0.82 else "divorced" if r < 0.87 else "widowed"
    registrations: list[dict[str, object]] = []
    if marital != "unmarried":
        office = f"济南市{district_zh}民政局婚姻登记处"
        marry_age = rng.randint(legal, max(legal, min(age, 34)))
        marry_ord = min(birth_ord + marry_age * 365 + rng.randrange(365), as_ord - 60)
        marry_ord = max(marry_ord, birth_ord + legal * 366)
        registrations.append({"event": "marriage", "registration_date": _iso(marry_ord), "registry_office": office})
        remarried = marital == "married" and age >= 30 and rng.random() < 0.1
        if marital == "divorced" or remarried:
            divorce_ord = min(marry_ord + rng.randint(365, 12 * 365), as_ord - 40)
            registrations.append(
                {"event": "divorce", "registration_date": _iso(divorce_ord), "registry_office": office}
            )
            if remarried:
                again_ord = min(divorce_ord + rng.randint(180, 6 * 365), as_ord - 20)
                registrations.append(
                    {"event": "marriage", "registration_date": _iso(again_ord), "registry_office": office}
                )
    v["civil_affairs.marital_status"] = marital
    v["civil_affairs.marriage_registrations"] = registrations
    children = 0 if marital == "unmarried" or age < 24 else rng.choice((0, 1, 1, 1, 2, 2))
    household = 1 + (marital == "married") + children + (rng.random() < 0.15)
    v["household_registration.household_size"] = household
    if household == 1 or rng.random() < 0.55:
        relationship = "head"
    elif marital == "married":
        relationship = "spouse"
    else:
        relationship = "child" if age < 40 else rng.choice(("parent", "sibling", "other"))
    v["household_registration.relationship_to_head"] = relationship

    # education
    cohort = _EDUCATION_YOUNG if age <= 35 else _EDUCATION_MIDDLE if age <= 50 else _EDUCATION_OLD
    level = _EDUCATION_LEVELS.index(_pick(rng, _EDUCATION_LEVELS, cohort))
    while level > 0 and _GRADUATION_AGE[level] + 1 > age:
        level -= 1
    grad_year = birth.year + _GRADUATION_AGE[level] + rng.choice((0, 0, 0, 1, 2))
    grad_ord = min(date(grad_year, 7, 1).toordinal(), as_ord - 90)
    education = _EDUCATION_LEVELS[level]
    v["education.highest_education"] = education
    v["education.graduation_date"] = _iso(grad_ord)
    if level >= 5:
        institution = rng.choice(_UNIVERSITIES)
    elif level == 4:
        institution = rng.choice(_COLLEGES)
    elif level in (2, 3):
        institution = rng.choice(_SENIOR_SCHOOLS) if level == 2 else f"济南市{district_zh}职业中等专业学校"
    else:
        institution = f"济南市{district_zh}第{rng.randint(1, 15)}{'小学' if level == 0 else '中学'}"
    v["education.institution_name"] = institution
    degree = education if level >= 5 and rng.random() < 0.96 else "none"
    v["education.degree"] = degree

    # work and income
    retire_age = 60 if male else 55
    if age >= retire_age:
        work = "retired" if rng.random() < 0.92 else "flexible"
    else:
        r = rng.random()
        employee_share = 0.55 if rural else 0.70
        work = "employee" if r < employee_share else "flexible" if r < employee_share + 0.17 else "unemployed"
    salary = int(_SALARY_BY_EDUCATION[level] * rng.lognormvariate(0.0, 0.35))
    salary = max(2_300_00, min(salary, 90_000_00))
    employer = _company_name(rng) if work in ("employee", "unemployed") else ""

    months = cal.history_months
    # rows start at 18 at the earliest; everyone is 20 or older, so there are always 24 to 36
    history_len = min(rng.randint(24, 36), (as_ord - birth_ord - 18 * 365) * 12 // 365)
    paid_pattern = [True] * history_len  # index 0 = newest month
    if work == "employee" and rng.random() < 0.18 and history_len > 4:
        start = rng.randint(1, history_len - 2)
        for k in range(start, min(history_len, start + rng.randint(1, 4))):
            paid_pattern[k] = False
    elif work == "flexible":
        paid_pattern = [rng.random() >= 0.12 for _ in range(history_len)]
    elif work == "unemployed":
        gap = rng.randint(2, history_len) if history_len else 0
        for k in range(gap):
            paid_pattern[k] = False
    if work == "retired":
        history_len = 0
        paid_pattern = []

    # social insurance
    if work == "flexible":
        base = _CONTRIBUTION_FLOOR if rng.random() < 0.7 else _CONTRIBUTION_FLOOR * rng.choice((8, 10, 12)) // 6
    else:
        base = max(_CONTRIBUTION_FLOOR, min(salary // 100 * 100, _CONTRIBUTION_CAP))
    personal_rate, employer_rate = (20, 0) if work == "flexible" else (8, 16)
    pension_rows: list[dict[str, object]] = []
    base_text = _cny(base)
    personal_text = _cny(base * personal_rate // 100)
    employer_text = _cny(base * employer_rate // 100)
    for k in range(history_len - 1, -1, -1):
        pension_rows.append(
            {
                "month": months[k][0],
                "contribution_base": base_text,
                "personal_amount": personal_text,
                "employer_amount": employer_text,
                "paid": paid_pattern[k],
            }
        )
    v["social_insurance.pension_contribution_history"] = pension_rows
    if work == "retired":
        status = "retired"
    elif paid_pattern and paid_pattern[0]:
        status = "contributing"
    else:
        status = "suspended"
    v["social_insurance.insured_status"] = status
    v["social_insurance.monthly_contribution_base"] = "0.00" if work == "retired" else base_text
    history_start_ord = months[history_len - 1][3] if history_len else months[0][3]
    first_ord = min(birth_ord + rng.randint(18 * 365, 26 * 365), history_start_ord)
    first_month = date.fromordinal(first_ord).replace(day=1)
    v["social_insurance.first_contribution_date"] = first_month.isoformat()
    if work == "retired":
        cumulative = rng.randint(180, max(181, (retire_age - 18) * 12))
    else:
        span_months = (months[0][1] - first_month.year) * 12 + (months[0][2] - first_month.month)
        earlier = max(0, span_months + 1 - history_len)
        cumulative = sum(paid_pattern) + earlier - int(earlier * rng.random() * 0.2)
    v["social_insurance.cumulative_contribution_months"] = cumulative
    v["social_insurance.current_employer"] = employer
    v["social_insurance.unemployment_benefit_receiving"] = work == "unemployed" and rng.random() < 0.4
    pension = rng.randint(2_600_00, 7_500_00) if work == "retired" else 0
    v["social_insurance.monthly_pension"] = _cny(pension)

    # taxation: wage rows for months with income
    special = 0  # only wage earners claim deductions
    if work in ("employee", "flexible"):
        if children and age < 50:
            special += 2_000_00 * children
        if 40 <= age < 62:
            special += rng.choice((0, 1_500_00, 3_000_00))  # elderly support
        if age < 40 and rng.random() < 0.3:
            special += 1_500_00  # rent
    v["taxation.special_additional_deduction_monthly"] = _cny(special)
    income_rows: list[dict[str, object]] = []
    last_year_income = 0
    last_year_tax = 0
    if work != "retired":
        insurance = base * 105 // 1000 if work == "employee" else 0
        for k in range(history_len - 1, -1, -1):
            if not paid_pattern[k] or (work == "flexible" and rng.random() < 0.4):
                continue
            iso_month, year, _, _ = months[k]
            gross = salary * rng.randint(92, 108) // 100
            if work == "employee" and iso_month[5:7] == "01" and rng.random() < 0.4:
                gross += salary * rng.randint(50, 200) // 100  # annual bonus paid in January
            tax = _monthly_tax_cents(gross - 5_000_00 - insurance - special) if work == "employee" else 0
            if work == "flexible":  # labour remuneration: 20% of income less 800 or less 20%
                tax = (gross - 800_00 if gross <= 4_000_00 else gross * 80 // 100) * 20 // 100
            income_rows.append({"month": iso_month, "gross_income": _cny(gross), "tax_withheld": _cny(tax)})
            if year == cal.last_year:
                last_year_income += gross
                last_year_tax += tax
    v["taxation.monthly_income_history"] = income_rows
    v["taxation.annual_income_last_year"] = _cny(last_year_income)
    v["taxation.annual_tax_paid_last_year"] = _cny(last_year_tax)

    # housing fund
    if work == "employee":
        fund_status = "active" if rng.random() < 0.85 else "not_opened"
        if fund_status == "active" and paid_pattern and not paid_pattern[0]:
            fund_status = "sealed"
    elif work == "unemployed":
        fund_status = "sealed" if rng.random() < 0.6 else "not_opened"
    elif work == "flexible":
        fund_status = "active" if rng.random() < 0.15 else "not_opened"
    else:
        fund_status = "closed" if rng.random() < 0.7 else "not_opened"
    fund_rows: list[dict[str, object]] = []
    fund_base = fund_deposit = balance = 0
    consecutive = 0
    if fund_status in ("active", "sealed"):
        fund_base = max(_FUND_FLOOR, min(salary // 100 * 100, _FUND_CAP))
        fund_deposit = fund_base * rng.choice((5, 7, 10, 12)) // 100 // 100 * 100 * 2
        fund_base_text = _cny(fund_base)
        fund_deposit_text = _cny(fund_deposit)
        paid_total = 0
        for k in range(history_len - 1, -1, -1):
            paid = paid_pattern[k]
            paid_total += fund_deposit if paid else 0
            fund_rows.append(
                {
                    "month": months[k][0],
                    "deposit_base": fund_base_text,
                    "amount": fund_deposit_text,
                    "paid": paid,
                }
            )
        while consecutive < history_len and paid_pattern[consecutive]:
            consecutive += 1
        if consecutive == history_len and consecutive:
            consecutive += rng.randint(0, 96)
        balance = max(0, paid_total + fund_deposit * rng.randint(0, 60) - rng.randint(0, 4) * 10_000_00)
    v["housing_fund.account_status"] = fund_status
    v["housing_fund.balance"] = _cny(balance)
    v["housing_fund.deposit_base"] = _cny(fund_base if fund_status == "active" else 0)
    v["housing_fund.monthly_deposit"] = _cny(fund_deposit if fund_status == "active" else 0)
    v["housing_fund.deposit_history"] = fund_rows
    v["housing_fund.consecutive_deposit_months"] = consecutive

    # court enforcement (decided early: it affects property and vehicle status)
    cases: list[dict[str, object]] = []
    entries: list[dict[str, object]] = []
    restricted = False
    court_code, court_name = _COURTS[district_name]
    court_date = dept_dates[DepartmentId("court_enforcement")].toordinal()
    if rng.random() < 0.035:
        for _ in range(1 if rng.random() < 0.75 else 2):
            filing_ord = as_ord - rng.randint(30, 6 * 365)
            filing_year = date.fromordinal(filing_ord).year
            case_number = f"({filing_year})鲁{court_code}执{rng.randint(100, 9999)}号"
            amount = rng.randint(5_000, 2_000_000) * 100
            case_status = _pick(rng, ("in_progress", "concluded", "terminated"), (60, 85, 100))
            cases.append(
                {
                    "case_number": case_number,
                    "court_name": court_name,
                    "filing_date": _iso(filing_ord),
                    "amount_to_enforce": _cny(amount),
                    "status": case_status,
                }
            )
            if case_status != "concluded" and rng.random() < 0.55:
                published = min(filing_ord + rng.randint(30, 400), court_date)
                entries.append(
                    {
                        "case_number": case_number,
                        "court_name": court_name,
                        "published_date": _iso(published),
                        "behaviour": _pick(
                            rng,
                            (
                                "refused_with_ability_to_perform",
                                "violated_property_reporting",
                                "violated_consumption_restriction",
                                "obstructed_enforcement",
                                "evaded_enforcement",
                                "breached_settlement_agreement",
                            ),
                            (60, 75, 83, 88, 95, 100),
                        ),
                        "performance": "not_performed" if rng.random() < 0.8 else "partially_performed",
                        "amount": _cny(amount),
                    }
                )
            if case_status != "concluded" and rng.random() < 0.6:
                restricted = True
    restricted = restricted or bool(entries)
    v["court_enforcement.enforcement_cases"] = cases
    v["court_enforcement.dishonest_debtor_entries"] = entries
    v["court_enforcement.consumption_restricted"] = restricted
    v["court_enforcement.on_dishonest_list"] = bool(entries)
    open_cases = any(case["status"] != "concluded" for case in cases)

    # real estate
    young = age < 26
    n_props = int(_pick(rng, ("0", "1", "2", "3"), (90, 100, 100, 100) if young else (30, 75, 93, 100)))
    properties: list[dict[str, object]] = []
    mortgages: list[dict[str, object]] = []
    area_total = 0
    fund_loan = 0
    earliest_owner_ord = birth_ord + 22 * 365
    for p in range(n_props):
        reg_ord = rng.randint(min(earliest_owner_ord, as_ord - 60), as_ord - 30)
        reg_year = date.fromordinal(reg_ord).year
        usage = (
            "residential"
            if p == 0
            else _pick(rng, ("residential", "parking", "commercial", "office"), (60, 90, 97, 100))
        )
        if usage == "parking":
            area = rng.randint(12_00, 40_00)
        elif usage == "residential":
            area = rng.randint(45_00, 180_00)
        else:
            area = rng.randint(30_00, 300_00)
        area_total += area
        prop_district = district if rng.random() < 0.7 else rng.choices(_DISTRICT_INDEXES, cum_weights=_DISTRICT_CUM)[0]
        prop_zh = _DISTRICTS[prop_district][2]
        certificate = f"鲁({reg_year})济南市不动产权第{rng.randrange(10**7):07d}号"
        acquisition = _pick(
            rng,
            (
                "commercial_purchase",
                "second_hand_purchase",
                "inheritance",
                "gift",
                "self_built",
                "relocation_resettlement",
            ),
            (55, 80, 86, 90, 93, 100),
        )
        mortgaged = acquisition in ("commercial_purchase", "second_hand_purchase") and (
            as_ord - reg_ord < 30 * 365 and rng.random() < 0.55
        )
        address = (
            f"{prop_zh}{rng.choice(_ROADS)}{rng.randint(1, 3000)}号"
            f"{rng.randint(1, 30)}号楼{rng.randint(1, 4)}单元{rng.randint(1, 33)}{rng.randint(1, 4):02d}"
        )
        properties.append(
            {
                "certificate_number": certificate,
                "district": _DISTRICTS[prop_district][1],
                "address": address,
                "usage": usage,
                "floor_area": _cny(area),
                "ownership": "joint" if marital == "married" and rng.random() < 0.6 else "sole",
                "acquisition": acquisition,
                "registration_date": _iso(reg_ord),
                "mortgaged": mortgaged,
            }
        )
        if mortgaged:
            price_per_m2 = rng.randint(9_000, 28_000)
            secured = area * price_per_m2 * rng.randint(40, 70) // 100 // 100 * 100  # cents, whole yuan
            from_fund = fund_status in ("active", "sealed") and rng.random() < 0.4
            if from_fund:
                fund_loan += secured * rng.randint(20, 95) // 100 // 100 * 100
            term_years = rng.choice((10, 15, 20, 25, 30))
            mortgages.append(
                {
                    "certificate_number": f"鲁({reg_year})济南市不动产证明第{rng.randrange(10**7):07d}号",
                    "property_certificate_number": certificate,
                    "mortgagee": "济南住房公积金中心" if from_fund else rng.choice(_BANKS),
                    "secured_amount": _cny(secured),
                    "registration_date": _iso(reg_ord),
                    "term_end_date": _iso(reg_ord + term_years * 365 + term_years // 4),
                }
            )
    v["real_estate.property_list"] = properties
    v["real_estate.property_count"] = n_props
    v["real_estate.total_floor_area"] = _cny(area_total)
    v["real_estate.mortgage_registrations"] = mortgages
    v["real_estate.seizure_registered"] = open_cases and n_props > 0 and rng.random() < 0.5
    v["housing_fund.loan_outstanding"] = _cny(fund_loan)

    # business registration: ~15% hold one (or two); "no business" is an empty list and status none
    businesses: list[dict[str, object]] = []
    capital_total = 0
    if age >= 22 and rng.random() < 0.15:
        for _ in range(1 if rng.random() < 0.85 else 2):
            entity = _pick(
                rng,
                ("individual_business", "limited_company", "sole_proprietorship", "partnership"),
                (55, 95, 98, 100),
            )
            est_ord = rng.randint(min(birth_ord + 20 * 365, as_ord - 60), as_ord - 30)
            industry = _pick(
                rng,
                (
                    "wholesale_retail", "catering", "manufacturing", "construction", "information_technology",
                    "transport_logistics", "leasing_business_services", "residential_services", "agriculture",
                    "education_culture",
                ),
                (30, 45, 52, 58, 66, 73, 80, 90, 96, 100),
            )  # fmt: skip
            if entity == "individual_business":
                name = f"{district_zh}{rng.choice(_EMPLOYER_CORE)}{rng.choice(_SHOPS)}"
                capital = rng.randint(1, 50) * 10_000_00
                role = "operator"
                code = _credit_code(rng, "92", id_area)
            else:
                name = "济南" + rng.choice(_EMPLOYER_CORE) + rng.choice(_EMPLOYER_TRADE) + "有限公司"
                capital = rng.randint(1, 500) * 10_000_00 * (2 if entity == "limited_company" else 1)
                role = "legal_representative" if rng.random() < 0.7 else "shareholder"
                code = _credit_code(rng, "91", id_area)
            business_status = _pick(rng, ("active", "abnormal_operation", "revoked", "deregistered"), (80, 88, 92, 100))
            if business_status in ("active", "abnormal_operation"):
                capital_total += capital
            businesses.append(
                {
                    "unified_social_credit_code": code,
                    "enterprise_name": name,
                    "entity_type": entity,
                    "role": role,
                    "status": business_status,
                    "registered_capital": _cny(capital),
                    "established_date": _iso(est_ord),
                    "industry": industry,
                }
            )
    statuses = [str(b["status"]) for b in businesses]
    best = next((s for s in ("active", "abnormal_operation", "revoked", "deregistered") if s in statuses), "none")
    v["market_regulation.business_registrations"] = businesses
    v["market_regulation.business_status"] = best
    v["market_regulation.registered_capital_total"] = _cny(capital_total)
    v["market_regulation.abnormal_operation_listed"] = "abnormal_operation" in statuses

    # taxes owed: ~5%
    arrears: list[dict[str, object]] = []
    if rng.random() < 0.05:
        kinds = ["individual_income_tax", "stamp_duty"]
        if n_props:
            kinds += ["property_tax", "urban_land_use_tax", "deed_tax"]
        for _ in range(1 if rng.random() < 0.7 else 2):
            period_k = rng.randint(3, 35)
            assessed_ord = months[period_k][3] + rng.randint(40, 120)
            assessed_ord = min(assessed_ord, as_ord - 20)
            amount = rng.randint(200_00, 60_000_00)
            late_fee = min(amount, amount * 5 * (as_ord - assessed_ord) // 10_000)  # 0.05% per day
            arrears.append(
                {
                    "tax_type": rng.choice(kinds),
                    "tax_period": months[period_k][0],
                    "amount": _cny(amount),
                    "late_fee": _cny(late_fee),
                    "assessed_date": _iso(assessed_ord),
                }
            )
    v["taxation.tax_arrears"] = arrears
    v["taxation.arrears_outstanding"] = bool(arrears)

    # vehicles and drivers
    licence = "none"
    if rng.random() < 0.68:
        licence = _pick(rng, ("C1", "C2", "B2", "A2", "A1", "B1", "D"), (78, 88, 93, 95, 96, 97, 100))
    n_vehicles = 0
    if age >= 22:
        n_vehicles = int(_pick(rng, ("0", "1", "2"), (45, 87, 100)))
    if n_vehicles and licence == "none" and rng.random() < 0.8:
        licence = "C1"
    vehicles: list[dict[str, object]] = []
    for _ in range(n_vehicles):
        fuel = _pick(rng, ("petrol", "electric", "plug_in_hybrid", "diesel"), (70, 88, 96, 100))
        if fuel in ("electric", "plug_in_hybrid"):
            plate = f"鲁A{rng.choice('DF')}{rng.randrange(100000):05d}"
        else:
            plate = f"鲁A{rng.choice(_PLATE_LETTERS)}{rng.randrange(1000):03d}{rng.choice(_PLATE_LETTERS)}"
        if open_cases and rng.random() < 0.4:
            vehicle_status = "seized"
        else:
            vehicle_status = _pick(rng, ("normal", "mortgaged", "inspection_overdue", "scrapped"), (88, 95, 99, 100))
        vehicle_type = _pick(
            rng,
            ("small_passenger_car", "small_truck", "medium_passenger_car", "motorcycle"),
            (92, 96, 98, 100),
        )
        vehicles.append(
            {
                "plate_number": plate,
                "vehicle_type": vehicle_type,
                "brand": rng.choice(_MOTORCYCLE_BRANDS if vehicle_type == "motorcycle" else _BRANDS),
                "fuel_type": fuel,
                "registration_date": _iso(rng.randint(max(birth_ord + 18 * 365, as_ord - 15 * 365), as_ord - 10)),
                "status": vehicle_status,
            }
        )
    v["traffic_police.vehicle_list"] = vehicles
    v["traffic_police.vehicle_count"] = n_vehicles
    v["traffic_police.driving_licence_class"] = licence
    has_licence = licence != "none"
    v["traffic_police.licence_points_deducted"] = (
        int(_pick(rng, ("0", "1", "2", "3", "6", "9", "12"), (70, 78, 84, 93, 97, 99, 100))) if has_licence else 0
    )
    v["traffic_police.unprocessed_violations"] = (
        int(_pick(rng, ("0", "1", "2", "3"), (85, 95, 99, 100))) if has_licence or n_vehicles else 0
    )

    # medical insurance
    if work in ("employee", "flexible") or (work == "retired" and rng.random() < 0.8):
        scheme = "employee"
    else:
        scheme = "urban_rural_resident" if rng.random() < 0.97 else "not_enrolled"
    v["medical_insurance.enrolment_type"] = scheme
    v["medical_insurance.personal_account_balance"] = _cny(
        rng.randint(300_00, 25_000_00) if scheme == "employee" else 0
    )
    medical_date = dept_dates[DepartmentId("medical_insurance")].toordinal()
    stays: list[dict[str, object]] = []
    self_paid = 0
    chronic_dx = False
    if scheme != "not_enrolled" and rng.random() < 0.05 + age * 0.003:
        n_stays = int(_pick(rng, ("1", "2", "3"), (70, 92, 100)))
        admissions = sorted(rng.randint(medical_date - 3 * 365, medical_date - 25) for _ in range(n_stays))
        diagnosis_weights = _DIAGNOSIS_OLD if age >= 50 else _DIAGNOSIS_YOUNG
        for admit in admissions:
            days = min(int(rng.expovariate(1 / 7)) + 1, 45)
            discharge = min(admit + days - 1, medical_date - 1)
            diagnosis = _pick(rng, _DIAGNOSES, diagnosis_weights)
            if diagnosis == "pregnancy_childbirth" and (male or age > 45):
                diagnosis = "other"
            hospital_code, hospital_name = rng.choice(_HOSPITALS)
            daily = _DAILY_COST.get(diagnosis, 1_400_00)
            total = (discharge - admit + 1) * daily * rng.randint(60, 150) // 100 + rng.randint(500_00, 6_000_00)
            ratio = rng.randint(70, 88) if scheme == "employee" else rng.randint(50, 70)
            fund = total * ratio // 100
            if discharge > medical_date - 365:
                self_paid += total - fund
            chronic_dx = chronic_dx or diagnosis in ("neoplasm", "circulatory", "endocrine_metabolic")
            stays.append(
                {
                    "admission_date": _iso(admit),
                    "discharge_date": _iso(discharge),
                    "hospital_code": hospital_code,
                    "hospital_name": hospital_name,
                    "diagnosis_category": diagnosis,
                    "total_amount": _cny(total),
                    "fund_paid_amount": _cny(fund),
                    "self_paid_amount": _cny(total - fund),
                }
            )
    v["medical_insurance.inpatient_stays"] = stays
    visits = rng.randint(0, 4 + age // 6) if scheme != "not_enrolled" else 0
    v["medical_insurance.outpatient_visits_last_year"] = visits
    v["medical_insurance.chronic_special_disease_certified"] = scheme != "not_enrolled" and (
        rng.random() < (0.25 if age > 50 else 0.04) or (chronic_dx and rng.random() < 0.7)
    )
    self_paid += visits * rng.randint(20_00, 150_00)
    v["medical_insurance.annual_self_paid_total"] = _cny(self_paid)

    # civil affairs support
    low_income = work == "unemployed" or (work == "flexible" and salary < 3_000_00)
    v["civil_affairs.subsistence_allowance_recipient"] = rng.random() < (0.1 if low_income else 0.006)
    v["civil_affairs.disability_certificate_level"] = (
        "none" if rng.random() < 0.96 else _pick(rng, ("level_1", "level_2", "level_3", "level_4"), (10, 35, 65, 100))
    )

    # public utilities
    v["public_utilities.overdue_bills_12m"] = 0 if rng.random() < 0.88 else rng.randint(1, 6)
    v["public_utilities.average_monthly_electricity"] = rng.randint(60, 160) + household * rng.randint(25, 70)
    utilities_date = dept_dates[DepartmentId("public_utilities")].toordinal()
    v["public_utilities.last_payment_date"] = _iso(utilities_date - rng.randint(0, 45))
    return v, dept_dates


# --- items the generator does not know -------------------------------------------------------------


def _generic_scalar(rng: random.Random, spec: CatalogItem | FieldSpec, cal: _Calendar) -> object:
    kind = spec.type
    if kind == "int":
        return rng.randint(0, 100)
    if kind == "decimal":
        return _cny(rng.randint(0, 10_000_00))
    if kind == "string":
        return f"synthetic-{rng.randrange(10**6):06d}"
    if kind == "date":
        return _iso(cal.as_of_ord - rng.randint(30, 3650))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "enum":
        return rng.choice(spec.values)
    raise AssertionError(kind)


def _generic_value(rng: random.Random, item: CatalogItem, cal: _Calendar) -> object:
    if item.type != "records":
        return _generic_scalar(rng, item, cal)
    return [{spec.name: _generic_scalar(rng, spec, cal) for spec in item.fields} for _ in range(rng.randint(0, 3))]
