#!/usr/bin/env python3
"""Generate src/protocol/kms/products_table.rs from KmsDataBase.xml.

Usage (from the repository root):

    python3 scripts/gen_products.py [PATH_TO_XML] > src/protocol/kms/products_table.rs
    python3 scripts/gen_products.py --check [PATH_TO_XML]

The default XML path is ../shared/protocol/products/KmsDataBase.xml, relative
to the repository root. `--check` regenerates in memory and exits 1 when the
committed table differs.

Only the standard library is used. The output is deterministic: every table
keeps the XML's document order, and the text is laid out exactly the way
`rustfmt --edition 2024` formats it, so `cargo fmt --check` leaves it alone.
Product keys (the Gvlk attributes) are never read.

Derived values, decided here so the Rust side only does lookups:

* Pool: fixed by the AppItem ID (Windows, Office 2010, Office 2013+); any
  other AppItem is an error.
* KmsGroup.epid_group: among CSVLKs that list the KMS ID in an <Activate> and
  carry an IniFileName, the best one (non-lab and non-preview first, then the
  newest ReleaseDate, then document order). With no such CSVLK, the App's
  default ePID group is used.
* App.default_epid_group: the IniFileName of the CSVLK whose VlmcsdIndex
  equals the AppItem's VlmcsdIndex (non-lab first, newest, first in the file).
* EpidGroup, one per distinct IniFileName (in order of first appearance): the
  representative CSVLK is the newest non-lab, non-preview, non-Azure one that
  has GroupId, MinKeyId and MaxKeyId; an undated CSVLK counts as older than
  any dated one. Its pool is the single pool of the KMS groups mapped to it.
* protocol_major: DefaultKmsProtocol "4.0"/"5.0"/"6.0" (default "6.0").
* n_policy: NCountPolicy (default 25).

XML quirks handled deliberately:

* Attribute names are matched case-insensitively (one KmsItem spells
  "DefaultKmsprotocol") and booleans accept any case ("True").
* An attribute present but empty counts as absent.
* A CsvlkItem without an Id (the Office 2013 pre-release placeholder) is left
  out: without an ID it cannot be referred to.
* <Activate> references are kept as written, even the few that name no
  KmsItem in the file.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import sys
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_XML = "../shared/protocol/products/KmsDataBase.xml"
TABLE_PATH = "src/protocol/kms/products_table.rs"
REGEN_COMMAND = f"python3 scripts/gen_products.py > {TABLE_PATH}"

POOLS = {
    "55c92734-d682-4d71-983e-d6ec3f16059f": "Windows",
    "59a52881-a989-479d-af46-f275c6370663": "Office2010",
    "0ff1ce15-a989-479d-af46-f275c6370663": "Office2013Plus",
}

PROTOCOLS = {"4.0": 4, "5.0": 5, "6.0": 6}

# Release dates used for an ePID group whose representative CSVLK has no
# ReleaseDate in the XML, keyed by CSVLK ID.
#
# Office LTSC 2024 (f3d89bbf-...): 2024-10-01, the general availability of
# Office 2024. The volume (LTSC) edition shipped shortly before that, so an
# activation date derived from this value is never earlier than the key
# could have existed.
RELEASE_FALLBACKS = {
    "f3d89bbf-c0ec-47ce-a8fa-e5a5f97e447f": (2024, 10, 1),
}


class DataError(Exception):
    """The XML does not hold what the generator needs."""


# --------------------------------------------------------------------------
# Parsing helpers


def attrs(elem: ET.Element) -> dict[str, str]:
    """Attributes keyed by lower-case name; empty values dropped."""
    out = {}
    for key, value in elem.attrib.items():
        value = value.strip()
        if value:
            out[key.lower()] = value
    return out


def where(elem: ET.Element) -> str:
    a = attrs(elem)
    return f"<{elem.tag} DisplayName={a.get('displayname', '?')!r} Id={a.get('id', '?')!r}>"


def required(elem: ET.Element, name: str) -> str:
    value = attrs(elem).get(name.lower())
    if value is None:
        raise DataError(f"{where(elem)}: missing attribute {name}")
    return value


def parse_guid(text: str, context: str) -> str:
    try:
        return str(uuid.UUID(text.strip().strip("{}")))
    except ValueError as err:
        raise DataError(f"{context}: bad GUID {text!r}") from err


def parse_bool(elem: ET.Element, name: str, default: bool = False) -> bool:
    value = attrs(elem).get(name.lower())
    if value is None:
        return default
    low = value.lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise DataError(f"{where(elem)}: {name}={value!r} is not a boolean")


def parse_int(elem: ET.Element, name: str, default: int | None = None) -> int | None:
    value = attrs(elem).get(name.lower())
    if value is None:
        return default
    try:
        number = int(value, 10)
    except ValueError as err:
        raise DataError(f"{where(elem)}: {name}={value!r} is not an integer") from err
    if number < 0:
        raise DataError(f"{where(elem)}: {name}={value!r} is negative")
    return number


def required_int(elem: ET.Element, name: str) -> int:
    value = parse_int(elem, name)
    if value is None:
        raise DataError(f"{where(elem)}: missing attribute {name}")
    return value


def parse_date(elem: ET.Element, name: str) -> tuple[int, int, int] | None:
    value = attrs(elem).get(name.lower())
    if value is None:
        return None
    try:
        year, month, day = (int(p, 10) for p in value[:10].split("-"))
    except ValueError as err:
        raise DataError(f"{where(elem)}: {name}={value!r} is not a date") from err
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise DataError(f"{where(elem)}: {name}={value!r} is not a date")
    return (year, month, day)


# --------------------------------------------------------------------------
# Model


@dataclass
class WinBuild:
    build: int
    platform_id: int
    release: tuple[int, int, int]
    name: str
    use_for_epid: bool
    may_be_server: bool
    uses_ndr64: bool


@dataclass
class Csvlk:
    id: str
    name: str
    release: tuple[int, int, int] | None
    vlmcsd_index: int | None
    group_id: int | None
    min_key_id: int | None
    max_key_id: int | None
    epid_group: str | None
    is_lab: bool
    is_preview: bool
    activates: list[str]


@dataclass
class Sku:
    id: str
    name: str
    kms_id: str
    app_id: str


@dataclass
class KmsGroup:
    id: str
    name: str
    app_id: str
    pool: str
    n_policy: int
    protocol_major: int
    is_retail: bool
    is_preview: bool
    epid_group: str = ""


@dataclass
class App:
    id: str
    name: str
    pool: str
    vlmcsd_index: int
    min_active_clients: int
    default_epid_group: str = ""
    groups: list[KmsGroup] = field(default_factory=list)


@dataclass
class EpidGroup:
    name: str
    csvlk: Csvlk
    release: tuple[int, int, int]
    pool: str


def read_builds(root: ET.Element) -> list[WinBuild]:
    builds = []
    for elem in root.iterfind("./WinBuilds/WinBuild"):
        release = parse_date(elem, "ReleaseDate")
        if release is None:
            raise DataError(f"WinBuild {attrs(elem).get('buildnumber')}: no ReleaseDate")
        builds.append(
            WinBuild(
                build=required_int(elem, "BuildNumber"),
                platform_id=required_int(elem, "PlatformId"),
                release=release,
                name=required(elem, "DisplayName"),
                use_for_epid=parse_bool(elem, "UseForEpid"),
                may_be_server=parse_bool(elem, "MayBeServer"),
                uses_ndr64=parse_bool(elem, "UsesNDR64"),
            )
        )
    if not builds:
        raise DataError("no <WinBuilds>/<WinBuild> found")
    if len({b.build for b in builds}) != len(builds):
        raise DataError("duplicate WinBuild BuildNumber")
    return builds


def read_csvlks(root: ET.Element) -> list[Csvlk]:
    csvlks = []
    for elem in root.iterfind("./CsvlkItems/CsvlkItem"):
        a = attrs(elem)
        if "id" not in a:
            continue  # placeholder entry, see the module docstring
        csvlks.append(
            Csvlk(
                id=parse_guid(a["id"], where(elem)),
                name=required(elem, "DisplayName"),
                release=parse_date(elem, "ReleaseDate"),
                vlmcsd_index=parse_int(elem, "VlmcsdIndex"),
                group_id=parse_int(elem, "GroupId"),
                min_key_id=parse_int(elem, "MinKeyId"),
                max_key_id=parse_int(elem, "MaxKeyId"),
                epid_group=a.get("inifilename"),
                is_lab=parse_bool(elem, "IsLab"),
                is_preview=parse_bool(elem, "IsPreview"),
                activates=[
                    parse_guid(required(act, "KmsItem"), where(elem))
                    for act in elem.iterfind("./Activate")
                ],
            )
        )
    if not csvlks:
        raise DataError("no <CsvlkItems>/<CsvlkItem> found")
    return csvlks


def read_apps(root: ET.Element) -> tuple[list[App], list[Sku]]:
    apps, skus = [], []
    for app_elem in root.iterfind("./AppItems/AppItem"):
        app_id = parse_guid(required(app_elem, "Id"), where(app_elem))
        pool = POOLS.get(app_id)
        if pool is None:
            raise DataError(f"{where(app_elem)}: unknown Application ID, no pool for it")
        app = App(
            id=app_id,
            name=required(app_elem, "DisplayName"),
            pool=pool,
            vlmcsd_index=required_int(app_elem, "VlmcsdIndex"),
            min_active_clients=parse_int(app_elem, "MinActiveClients", 0) or 0,
        )
        for kms_elem in app_elem.iterfind("./KmsItem"):
            protocol = attrs(kms_elem).get("defaultkmsprotocol", "6.0")
            if protocol not in PROTOCOLS:
                raise DataError(f"{where(kms_elem)}: DefaultKmsProtocol={protocol!r}")
            group = KmsGroup(
                id=parse_guid(required(kms_elem, "Id"), where(kms_elem)),
                name=required(kms_elem, "DisplayName"),
                app_id=app_id,
                pool=pool,
                n_policy=parse_int(kms_elem, "NCountPolicy", 25) or 0,
                protocol_major=PROTOCOLS[protocol],
                is_retail=parse_bool(kms_elem, "IsRetail"),
                is_preview=parse_bool(kms_elem, "IsPreview"),
            )
            app.groups.append(group)
            for sku_elem in kms_elem.iterfind("./SkuItem"):
                skus.append(
                    Sku(
                        id=parse_guid(required(sku_elem, "Id"), where(sku_elem)),
                        name=required(sku_elem, "DisplayName"),
                        kms_id=group.id,
                        app_id=app_id,
                    )
                )
        apps.append(app)
    if not apps:
        raise DataError("no <AppItems>/<AppItem> found")
    groups = [g for app in apps for g in app.groups]
    for what, ids in (
        ("AppItem", [a.id for a in apps]),
        ("KmsItem", [g.id for g in groups]),
        ("SkuItem", [s.id for s in skus]),
    ):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise DataError(f"duplicate {what} Id: {', '.join(dupes)}")
    return apps, skus


# --------------------------------------------------------------------------
# Derivations


def newest_key(c: Csvlk) -> tuple[bool, tuple[int, int, int]]:
    """Sort key: dated before undated, then by date."""
    return (c.release is not None, c.release or (0, 0, 0))


def best(candidates: list[Csvlk], key) -> Csvlk | None:
    """Highest key, ties resolved by document order (first wins)."""
    chosen = None
    for c in candidates:
        if chosen is None or key(c) > key(chosen):
            chosen = c
    return chosen


def derive(csvlks: list[Csvlk], apps: list[App]) -> list[EpidGroup]:
    for app in apps:
        same_index = [
            c for c in csvlks if c.vlmcsd_index == app.vlmcsd_index and c.epid_group
        ]
        chosen = best(same_index, lambda c: (not c.is_lab, newest_key(c)))
        if chosen is None or chosen.epid_group is None:
            raise DataError(
                f"AppItem {app.name!r}: no CSVLK with VlmcsdIndex={app.vlmcsd_index}"
                " and an IniFileName"
            )
        app.default_epid_group = chosen.epid_group

        for group in app.groups:
            activating = [c for c in csvlks if group.id in c.activates and c.epid_group]
            chosen = best(
                activating,
                lambda c: (not c.is_lab and not c.is_preview, newest_key(c)),
            )
            if chosen is not None and chosen.epid_group is not None:
                group.epid_group = chosen.epid_group
            else:
                group.epid_group = app.default_epid_group

    groups = [g for app in apps for g in app.groups]
    names: list[str] = []
    for c in csvlks:
        if c.epid_group and c.epid_group not in names:
            names.append(c.epid_group)

    epid_groups = []
    for name in names:
        candidates = [
            c
            for c in csvlks
            if c.epid_group == name
            and not c.is_lab
            and not c.is_preview
            and "azure" not in c.name.lower()
            and c.group_id is not None
            and c.min_key_id is not None
            and c.max_key_id is not None
        ]
        rep = best(candidates, newest_key)
        if rep is None:
            raise DataError(f"ePID group {name!r}: no usable representative CSVLK")
        assert rep.min_key_id is not None and rep.max_key_id is not None
        if rep.min_key_id > rep.max_key_id:
            raise DataError(f"CSVLK {rep.name!r}: MinKeyId > MaxKeyId")
        release = rep.release or RELEASE_FALLBACKS.get(rep.id)
        if release is None:
            raise DataError(
                f"ePID group {name!r}: CSVLK {rep.name!r} ({rep.id}) has no ReleaseDate;"
                " add one to RELEASE_FALLBACKS"
            )
        pools = {g.pool for g in groups if g.epid_group == name}
        if not pools:
            pools = {g.pool for g in groups if any(g.id in c.activates for c in candidates)}
        if len(pools) != 1:
            raise DataError(f"ePID group {name!r}: spans pools {sorted(pools)}")
        epid_groups.append(EpidGroup(name=name, csvlk=rep, release=release, pool=pools.pop()))

    known = set(names)
    for group in groups:
        if group.epid_group not in known:
            raise DataError(f"KMS group {group.name!r}: unknown ePID group {group.epid_group!r}")
    return epid_groups


# --------------------------------------------------------------------------
# Rust emission, laid out as rustfmt (edition 2024, default options) does:
# multi-field struct literals go vertical, a one-element slice of a GUID
# stays on one line, longer slices go one element per line.


def rs_str(text: str) -> str:
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def rs_guid(text: str) -> str:
    h = uuid.UUID(text).hex
    return f"Guid::from_u128(0x{h[0:8]}_{h[8:12]}_{h[12:16]}_{h[16:20]}_{h[20:32]})"


def rs_bool(value: bool) -> str:
    return "true" if value else "false"


def rs_pool(pool: str) -> str:
    return f"Pool::{pool}"


class Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, indent: int, text: str) -> None:
        self.lines.append(" " * (4 * indent) + text if text else "")

    def date_field(self, indent: int, name: str, date, optional: bool) -> None:
        if date is None:
            self.line(indent, f"{name}: None,")
            return
        year, month, day = date
        self.line(indent, f"{name}: {'Some(' if optional else ''}Date {{")
        self.line(indent + 1, f"year: {year},")
        self.line(indent + 1, f"month: {month},")
        self.line(indent + 1, f"day: {day},")
        self.line(indent, "})," if optional else "},")

    def guid_slice_field(self, indent: int, name: str, guids: list[str]) -> None:
        if len(guids) <= 1:
            inner = ", ".join(rs_guid(g) for g in guids)
            self.line(indent, f"{name}: &[{inner}],")
            return
        self.line(indent, f"{name}: &[")
        for g in guids:
            self.line(indent + 1, f"{rs_guid(g)},")
        self.line(indent, "],")

    def table(self, name: str, ty: str, rows: list, emit_row) -> None:
        self.line(0, f"pub(super) static {name}: &[{ty}] = &[")
        for row in rows:
            self.line(1, f"{ty} {{")
            emit_row(row)
            self.line(1, "},")
        self.line(0, "];")


def opt(value, render=str) -> str:
    return "None" if value is None else f"Some({render(value)})"


def render(
    source_sha256: str,
    builds: list[WinBuild],
    csvlks: list[Csvlk],
    apps: list[App],
    skus: list[Sku],
    epid_groups: list[EpidGroup],
) -> str:
    w = Writer()
    w.line(0, "// @generated by scripts/gen_products.py from KmsDataBase.xml")
    w.line(0, f"// (sha256 {source_sha256}).")
    w.line(0, "// Do not edit by hand; regenerate from the repository root with:")
    w.line(0, f"//     {REGEN_COMMAND}")
    w.line(0, "")
    w.line(0, "use super::{App, Csvlk, Date, EpidGroup, KmsGroup, Pool, Sku, WinBuild};")
    w.line(0, "use crate::protocol::guid::Guid;")
    w.line(0, "")

    def build_row(b: WinBuild) -> None:
        w.line(2, f"build: {b.build},")
        w.line(2, f"platform_id: {b.platform_id},")
        w.date_field(2, "release", b.release, optional=False)
        w.line(2, f"name: {rs_str(b.name)},")
        w.line(2, f"use_for_epid: {rs_bool(b.use_for_epid)},")
        w.line(2, f"may_be_server: {rs_bool(b.may_be_server)},")
        w.line(2, f"uses_ndr64: {rs_bool(b.uses_ndr64)},")

    def csvlk_row(c: Csvlk) -> None:
        w.line(2, f"id: {rs_guid(c.id)},")
        w.line(2, f"name: {rs_str(c.name)},")
        w.date_field(2, "release", c.release, optional=True)
        w.line(2, f"group_id: {opt(c.group_id)},")
        w.line(2, f"min_key_id: {opt(c.min_key_id)},")
        w.line(2, f"max_key_id: {opt(c.max_key_id)},")
        w.line(2, f"epid_group: {opt(c.epid_group, rs_str)},")
        w.line(2, f"is_lab: {rs_bool(c.is_lab)},")
        w.line(2, f"is_preview: {rs_bool(c.is_preview)},")
        w.guid_slice_field(2, "activates", c.activates)

    def app_row(a: App) -> None:
        w.line(2, f"id: {rs_guid(a.id)},")
        w.line(2, f"name: {rs_str(a.name)},")
        w.line(2, f"pool: {rs_pool(a.pool)},")
        w.line(2, f"min_active_clients: {a.min_active_clients},")
        w.line(2, f"default_epid_group: {rs_str(a.default_epid_group)},")

    def group_row(g: KmsGroup) -> None:
        w.line(2, f"id: {rs_guid(g.id)},")
        w.line(2, f"name: {rs_str(g.name)},")
        w.line(2, f"app_id: {rs_guid(g.app_id)},")
        w.line(2, f"pool: {rs_pool(g.pool)},")
        w.line(2, f"n_policy: {g.n_policy},")
        w.line(2, f"protocol_major: {g.protocol_major},")
        w.line(2, f"is_retail: {rs_bool(g.is_retail)},")
        w.line(2, f"is_preview: {rs_bool(g.is_preview)},")
        w.line(2, f"epid_group: {rs_str(g.epid_group)},")

    def sku_row(s: Sku) -> None:
        w.line(2, f"id: {rs_guid(s.id)},")
        w.line(2, f"name: {rs_str(s.name)},")
        w.line(2, f"kms_id: {rs_guid(s.kms_id)},")
        w.line(2, f"app_id: {rs_guid(s.app_id)},")

    def epid_row(e: EpidGroup) -> None:
        w.line(2, f"name: {rs_str(e.name)},")
        w.line(2, f"csvlk: {rs_guid(e.csvlk.id)},")
        w.line(2, f"group_id: {e.csvlk.group_id},")
        w.line(2, f"min_key_id: {e.csvlk.min_key_id},")
        w.line(2, f"max_key_id: {e.csvlk.max_key_id},")
        w.date_field(2, "csvlk_release", e.release, optional=False)
        w.line(2, f"pool: {rs_pool(e.pool)},")

    groups = [g for app in apps for g in app.groups]
    w.table("WIN_BUILDS", "WinBuild", builds, build_row)
    w.line(0, "")
    w.table("CSVLKS", "Csvlk", csvlks, csvlk_row)
    w.line(0, "")
    w.table("APPS", "App", apps, app_row)
    w.line(0, "")
    w.table("KMS_GROUPS", "KmsGroup", groups, group_row)
    w.line(0, "")
    w.table("SKUS", "Sku", skus, sku_row)
    w.line(0, "")
    w.table("EPID_GROUPS", "EpidGroup", epid_groups, epid_row)
    return "\n".join(w.lines) + "\n"


def generate(xml_path: Path) -> str:
    data = xml_path.read_bytes()
    root = ET.fromstring(data)
    if root.tag != "KmsData":
        raise DataError(f"root element is <{root.tag}>, expected <KmsData>")
    builds = read_builds(root)
    csvlks = read_csvlks(root)
    apps, skus = read_apps(root)
    epid_groups = derive(csvlks, apps)
    return render(hashlib.sha256(data).hexdigest(), builds, csvlks, apps, skus, epid_groups)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=f"Generate {TABLE_PATH} from KmsDataBase.xml (written to stdout)."
    )
    parser.add_argument(
        "xml",
        nargs="?",
        help=f"path to KmsDataBase.xml (default: {DEFAULT_XML} relative to the repository root)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"compare with {TABLE_PATH} instead of printing; exit 1 if it is stale",
    )
    args = parser.parse_args()
    xml_path = Path(args.xml) if args.xml else REPO_ROOT / DEFAULT_XML

    try:
        text = generate(xml_path)
    except (OSError, ET.ParseError, DataError) as err:
        print(f"gen_products: {xml_path}: {err}", file=sys.stderr)
        return 2

    if not args.check:
        sys.stdout.write(text)
        return 0

    table = REPO_ROOT / TABLE_PATH
    try:
        current = table.read_text(encoding="utf-8")
    except OSError as err:
        print(f"gen_products: cannot read {table}: {err}", file=sys.stderr)
        return 1
    if current == text:
        return 0
    diff = list(
        difflib.unified_diff(
            current.splitlines(),
            text.splitlines(),
            f"{TABLE_PATH} (committed)",
            f"{TABLE_PATH} (generated)",
            lineterm="",
        )
    )
    print(f"gen_products: {TABLE_PATH} is out of date; run:\n    {REGEN_COMMAND}", file=sys.stderr)
    for line in diff[:40]:
        print(line, file=sys.stderr)
    if len(diff) > 40:
        print(f"... ({len(diff) - 40} more diff lines)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
