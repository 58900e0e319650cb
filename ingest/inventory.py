"""Incremental listing: what an archive held when it was last ingested, so a re-scan reads only what is new.

An ingest run lists its archive (path, size and version: the ETag on object stores, the mtime on
disks; see :func:`radforge.ingest.discover.list_entries`), reads every object's header and groups
the headers into series plans. The inventory keeps, per archive, the outcome of that work: for
each object its state (a salted hash of path, size and version) and the series group it belongs
to, and for each group its plans. The next run of the same archive reads the header only of
objects that are new or changed (or whose group gained, lost or changed a member) and takes the
plans of every other group from the inventory: an unchanged archive reads no header, a delivery
that adds 1% of the objects reads about 1% of the headers. Like rsync's quick check, an object
whose size and version are unchanged counts as unchanged.

Nothing identifying is stored. Headers hold DICOM UIDs and object paths may hold names, so the
inventory keeps no header at all: object paths, group keys (study and series UIDs) and object
states become salted keys (:func:`radforge.ingest.deid.salted_key`, the ingest's own pseudonyms,
under distinct labels); a plan's instance paths are replaced by their object's key and restored
from the listing of the next run; plans carry only what the series manifests already carry
(salted series and study keys, geometry, allow-listed attributes; sex and age bucket only when the
config keeps them). The listing fingerprint that names a snapshot is a SHA-256 of the whole
listing, which the scheduler recomputes without the salt to tell that an archive is unchanged.

Layout (inside the dataset, one folder per archive)::

    _inventory/<sha256 of the canonical archive URI, 32 hex>/<time ns>-<listing fingerprint>.parquet

A snapshot is one immutable Parquet object (a row per object: ``object``, ``state``, ``group``,
and the group's ``plans`` on its first row), written after the run's datasink completed (a run
that failed leaves none) and never changed. Writers of different archives never touch the same
folder; writers of one archive each add their own snapshot and readers take the newest. Every
snapshot only states facts about object versions (which plans the headers of these exact
objects give), independent of the dataset's state: whichever snapshot a reader takes, plans it
reuses are the plans a full re-read would make. Whether a series is already in the dataset is
decided again on every run (:func:`settle`). The last :data:`KEEP_SNAPSHOTS` snapshots are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from radforge.ingest.deid import salted_key
from radforge.ingest.discover import IO_FAILURE, Header, list_entries
from radforge.ingest.errors import Reason, SourceError
from radforge.ingest.series import PlanRules, SeriesPlan, group_key
from radforge.storage import Location, canonical_uri, resolve, write_bytes_atomic

log = logging.getLogger(__name__)

INVENTORY = "_inventory"
# Bump when discovery or planning changes what the same object yields: older inventories are ignored.
INVENTORY_FORMAT = 1
KEEP_SNAPSHOTS = 2
SNAPSHOT_SUFFIX = ".parquet"
FINGERPRINT_CHARS = 32
ALREADY_DETAIL = "series key already in the dataset"  # radforge.ingest.series._check's words
_OPTIONAL_ATTRS = ("sex", "age_bucket")  # written only when the config keeps them
# Reasons radforge.ingest.series._check gives after its already-ingested check (mosaic layout).
_DECIDED_AFTER_ALREADY = frozenset({Reason.MOSAIC_UNDECODABLE.value})


def archive_folder(dataset: Location, archive_uri: str) -> Location:
    """The inventory folder of one archive inside ``dataset`` (named by its canonical URI's hash)."""
    name = hashlib.sha256(canonical_uri(archive_uri).encode()).hexdigest()[:32]
    return dataset.join(INVENTORY, name)


def listing_fingerprint(entries: Iterable[tuple[str, int, str | None]]) -> str:
    """SHA-256 of a whole listing (path, size, version): equal iff the archive's objects are unchanged."""
    h = hashlib.sha256()
    for path, size, version in sorted(entries):
        h.update(f"{path}\t{size}\t{version}\n".encode())
    return h.hexdigest()[:FINGERPRINT_CHARS]


def object_key(salt: bytes, path: str) -> str:
    """The pseudonym of an object path (the inventory never holds paths)."""
    return salted_key(salt, "inventory-object", path)


def object_state(salt: bytes, path: str, size: int, version: str | None) -> str | None:
    """The pseudonym of an object's (path, size, version); None when the listing gave no version."""
    return None if version is None else salted_key(salt, "inventory-state", path, str(size), version)


def group_pseudonym(salt: bytes, group: str) -> str:
    """The pseudonym of a group key (:func:`radforge.ingest.series.group_key`: holds UIDs or a path)."""
    return salted_key(salt, "inventory-group", group)


def plan_context(salt: bytes, rules: PlanRules, keep_attrs: frozenset[str]) -> str:
    """What cached plans depend on besides the headers: format, salt, planning rules, kept attributes."""
    parts = [str(INVENTORY_FORMAT), str(rules.max_volumes), ",".join(sorted(rules.skip_kinds))]
    return salted_key(salt, "inventory-context", *parts, ",".join(sorted(keep_attrs)))


def kept_attrs(*, keep_sex: bool, keep_age_bucket: bool) -> frozenset[str]:
    """The optional attributes (``deid.keep_*``) a cached plan may hold."""
    return frozenset(a for a, keep in zip(_OPTIONAL_ATTRS, (keep_sex, keep_age_bucket), strict=True) if keep)


@dataclass
class GroupRecord:
    """One planned group: its members (object keys, copies included) and its plans (paths as object keys)."""

    group: str
    members: list[str]
    plans: list[str]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> GroupRecord:
        return cls(**json.loads(text))


def group_record(
    headers: list[Header], plans: list[SeriesPlan], *, salt: bytes, keep_attrs: frozenset[str]
) -> GroupRecord | None:
    """The inventory record of one group planned from ``headers``; None when it must be read again.

    A header that could not be read at all (a storage error, not bad bytes) is not recorded: the
    next run tries it again.
    """
    if any(h.kind == "unreadable" and (h.detail or "").startswith(IO_FAILURE) for h in headers):
        return None
    keys = {h.path: object_key(salt, h.path) for h in headers}
    stored = []
    for plan in plans:
        data = json.loads(plan.to_json())
        for instance in data["instances"]:
            instance["path"] = keys[instance["path"]]
        data["attrs"] = {
            k: v for k, v in data["attrs"].items() if k not in _OPTIONAL_ATTRS or k in keep_attrs
        }
        stored.append(json.dumps(data, separators=(",", ":")))
    return GroupRecord(
        group=group_pseudonym(salt, group_key(headers[0])), members=sorted(set(keys.values())), plans=stored
    )


def settle(plan: SeriesPlan, already: frozenset[str]) -> SeriesPlan:
    """A cached plan as :func:`radforge.ingest.series.plan_group` would make it now, given ``already``.

    Only a plan that reached planning's already-ingested check depends on what the dataset holds:
    a pending one, or one stopped after that check (a mosaic whose layout failed).
    """
    if plan.series_key in already and (plan.status == "pending" or plan.reason in _DECIDED_AFTER_ALREADY):
        plan.stop(Reason.ALREADY_INGESTED, ALREADY_DETAIL)
        plan.mosaic = None  # plan_group does not lay out a series it skips
    return plan


@dataclass
class Inventory:
    """One snapshot: object key -> state, group pseudonym -> record."""

    context: str
    fingerprint: str
    states: dict[str, str] = field(default_factory=dict)
    objects_group: dict[str, str] = field(default_factory=dict)
    groups: dict[str, GroupRecord] = field(default_factory=dict)


def to_parquet(inv: Inventory) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    objects, states, groups, plans = [], [], [], []
    for record in sorted(inv.groups.values(), key=lambda r: r.group):
        for i, member in enumerate(record.members):
            objects.append(member)
            states.append(inv.states[member])
            groups.append(record.group)
            plans.append(json.dumps(record.plans, separators=(",", ":")) if i == 0 else None)
    table = pa.table(
        {"object": objects, "state": states, "group": groups, "plans": pa.array(plans, type=pa.string())}
    )
    meta = {"format": str(INVENTORY_FORMAT), "context": inv.context, "fingerprint": inv.fingerprint}
    table = table.replace_schema_metadata({f"radforge.inventory.{k}": v for k, v in meta.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def from_parquet(data: bytes) -> Inventory:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    inv = Inventory(
        context=meta.get("radforge.inventory.context", ""),
        fingerprint=meta.get("radforge.inventory.fingerprint", ""),
    )
    if meta.get("radforge.inventory.format") != str(INVENTORY_FORMAT):
        return inv  # another format: nothing in it is reused
    columns = [table.column(c).to_pylist() for c in ("object", "state", "group", "plans")]
    for obj, state, group, plans in zip(*columns, strict=True):
        inv.states[obj] = state
        inv.objects_group[obj] = group
        record = inv.groups.setdefault(group, GroupRecord(group=group, members=[], plans=[]))
        record.members.append(obj)
        if plans is not None:
            record.plans = json.loads(plans)
    return inv


def _snapshots(folder: Location) -> list[str]:
    """Snapshot object names in ``folder``, newest first (fresh listing: other writers' snapshots)."""
    fs = folder.fs
    try:
        names = [
            str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder.path, detail=False, refresh=True)
        ]
    except FileNotFoundError:
        return []
    except OSError as e:  # unreadable: costs header reads, never a run
        log.warning("an inventory folder cannot be listed (%s); headers are read again", type(e).__name__)
        return []
    return sorted((n for n in names if n.endswith(SNAPSHOT_SUFFIX) and "-" in n), reverse=True)


def latest_fingerprint(dataset_uri: str, archive_uri: str) -> str | None:
    """The listing fingerprint of the newest inventory of an archive, from its name (no object read)."""
    names = _snapshots(archive_folder(resolve(dataset_uri), archive_uri))
    return names[0].removesuffix(SNAPSHOT_SUFFIX).split("-", 1)[1] if names else None


def archive_unchanged(dataset_uri: str, archive_uri: str) -> bool | None:
    """Whether the archive's objects are those its newest inventory lists; None without an inventory.

    A listing and the names in one folder: no object of the archive is read, no salt is needed.
    """
    recorded = latest_fingerprint(dataset_uri, archive_uri)
    if recorded is None:
        return None
    try:
        return recorded == listing_fingerprint(list_entries(resolve(archive_uri)))
    except SourceError:  # gone or empty since: not an unchanged archive
        return False


def load_inventory(dataset: Location, archive_uri: str) -> Inventory | None:
    """The newest readable inventory of an archive, or None (a snapshot pruned meanwhile: the next one)."""
    folder = archive_folder(dataset, archive_uri)
    for name in _snapshots(folder):
        loc = folder.join(name)
        try:
            with loc.fs.open(loc.path, "rb") as f:
                return from_parquet(f.read())
        except FileNotFoundError:
            continue
        except Exception as e:  # an unreadable inventory costs header reads, never a run
            log.warning("inventory %s is unreadable (%s); headers are read again", name, type(e).__name__)
            return None
    return None


def save_inventory(dataset: Location, archive_uri: str, inv: Inventory) -> Location:
    """Add a snapshot of ``inv`` for the archive and prune older ones (best effort)."""
    folder = archive_folder(dataset, archive_uri)
    loc = folder.join(f"{time.time_ns():020d}{uuid.uuid4().hex[:4]}-{inv.fingerprint}{SNAPSHOT_SUFFIX}")
    write_bytes_atomic(loc, to_parquet(inv))
    for old in _snapshots(folder)[KEEP_SNAPSHOTS:]:
        try:
            folder.fs.rm_file(folder.join(old).path)
        except FileNotFoundError:
            pass  # pruned by a concurrent writer of the same archive
    return loc


@dataclass
class Reuse:
    """How a run uses an archive's inventory: which headers to read, which groups' plans to take."""

    read: list[tuple[str, int]]  # (path, size) of objects whose header is read
    groups: dict[str, GroupRecord]  # groups taken from the inventory (not re-planned)
    paths: dict[str, str]  # object key -> path, for every listed object
    sizes: dict[str, int]  # object key -> size
    states: dict[str, str | None]  # object key -> state now

    @property
    def reused_objects(self) -> int:
        return sum(len(r.members) for r in self.groups.values())

    def release(self, seen_groups: Iterable[str]) -> list[tuple[str, int]]:
        """Drop the groups that freshly read headers joined; returns their members (to read too)."""
        joined = [g for g in set(seen_groups) if g in self.groups]
        extra = [(self.paths[m], self.sizes[m]) for g in joined for m in self.groups.pop(g).members]
        self.read.extend(extra)
        return extra

    def plans(self, already: frozenset[str]) -> list[tuple[str, list[SeriesPlan], int]]:
        """(group, settled plans with their paths restored, bytes of its objects) of each reused group."""
        out = []
        for group, record in sorted(self.groups.items()):
            plans = []
            for text in record.plans:
                data = json.loads(text)
                for instance in data["instances"]:
                    instance["path"] = self.paths[instance["path"]]
                plans.append(settle(SeriesPlan.from_json(json.dumps(data)), already))
            out.append((group, plans, sum(self.sizes[m] for m in record.members)))
        return out


def plan_reuse(
    inv: Inventory | None,
    entries: list[tuple[str, int, str | None]],
    *,
    salt: bytes,
    context: str,
    already: frozenset[str],
) -> Reuse:
    """Which groups of ``inv`` still hold for the listing ``entries``; every other object is read.

    A group is reused when each of its members is listed with the state it had and no plan of it
    was skipped as already ingested for a series the dataset no longer holds. Objects added to a
    reused group are only known once their headers are read: :meth:`Reuse.release` drops it then.
    """
    paths, sizes, states = {}, {}, {}
    for path, size, version in entries:
        key = object_key(salt, path)
        paths[key], sizes[key], states[key] = path, size, object_state(salt, path, size, version)
    groups: dict[str, GroupRecord] = {}
    if inv is not None and inv.context == context:
        for group, record in inv.groups.items():
            if all(states.get(m) is not None and states[m] == inv.states.get(m) for m in record.members) and (
                _still_skipped(record, already)
            ):
                groups[group] = record
    covered = {m for record in groups.values() for m in record.members}
    read = [(path, size) for path, size, _ in entries if object_key(salt, path) not in covered]
    return Reuse(read=read, groups=groups, paths=paths, sizes=sizes, states=states)


def _still_skipped(record: GroupRecord, already: frozenset[str]) -> bool:
    for text in record.plans:
        data = json.loads(text)
        if data["reason"] == Reason.ALREADY_INGESTED.value and data["series_key"] not in already:
            return False
    return True


def next_inventory(
    reuse: Reuse, fresh: Iterable[GroupRecord], *, context: str, fingerprint: str
) -> Inventory:
    """The inventory after a run: the reused groups and the groups it planned from fresh headers."""
    inv = Inventory(context=context, fingerprint=fingerprint)
    for record in [*reuse.groups.values(), *fresh]:
        states = [reuse.states.get(m) for m in record.members]
        if any(s is None for s in states):
            continue  # an object without a version (or gone since the listing): read it next time
        inv.groups[record.group] = record
        for member, state in zip(record.members, states, strict=True):
            inv.states[member] = str(state)
            inv.objects_group[member] = record.group
    return inv


__all__ = [
    "INVENTORY",
    "GroupRecord",
    "Inventory",
    "Reuse",
    "archive_folder",
    "archive_unchanged",
    "group_pseudonym",
    "group_record",
    "kept_attrs",
    "latest_fingerprint",
    "listing_fingerprint",
    "load_inventory",
    "next_inventory",
    "plan_context",
    "plan_reuse",
    "save_inventory",
    "settle",
]
