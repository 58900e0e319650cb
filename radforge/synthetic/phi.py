"""Planted identifying values: unique, greppable markers placed wherever PHI hides in DICOM.

De-identification can only be tested if we know exactly what must disappear. A ``PlantedPHI`` is
one synthetic patient whose identifying attributes are marker strings (``"PHINAME" + 8 hex``,
``"PHIID" + 8 hex``, ...) or valid but random dates and times. ``plant`` writes them into a dataset:
patient module, dates and times, institution and physicians, free-text descriptions, device serial,
a private block and nested sequences. Every UID of a file written with it (study, series, SOP
instance, frame of reference) is recorded too, since original UIDs must not leak either.
``markers()`` lists every string a test should search the output bytes for.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

__all__ = ["PRIVATE_CREATOR", "PRIVATE_GROUP", "PlantedPHI"]

PRIVATE_GROUP = 0x0019
PRIVATE_CREATOR = "RADFORGE SYNTHETIC PHI"


def _marker(rng: random.Random, prefix: str) -> str:
    return f"{prefix}{rng.getrandbits(32):08X}"


def _date(rng: random.Random, first_year: int, last_year: int) -> dt.date:
    start = dt.date(first_year, 1, 1).toordinal()
    end = dt.date(last_year, 12, 31).toordinal()
    return dt.date.fromordinal(rng.randint(start, end))


def _time(rng: random.Random) -> str:
    """Return a DICOM TM with microseconds, distinctive enough to search for."""
    hh, mm, ss, us = rng.randint(7, 19), rng.randint(0, 59), rng.randint(0, 59), rng.randint(0, 999999)
    return f"{hh:02d}{mm:02d}{ss:02d}.{us:06d}"


@dataclass
class PlantedPHI:
    """One synthetic patient's identifying values, derived from ``seed`` (see :meth:`from_seed`).

    ``uids`` grows as series are written with this patient (original UIDs are identifying too).
    """

    seed: int
    family_name: str  # PHINAME...
    given_name: str  # PHIGIVEN...
    patient_id: str
    other_patient_id: str
    birth_date: str  # YYYYMMDD, a real date
    study_date: str  # also SeriesDate, AcquisitionDate, ContentDate
    study_time: str
    series_time: str
    acquisition_time: str
    content_time: str
    accession_number: str
    institution_name: str
    institution_address: str
    referring_physician: str
    performing_physician: str
    operator: str
    study_description: str
    series_description: str
    image_comments: str
    study_id: str
    device_serial: str
    private_value: str
    requested_procedure_id: str  # nested: RequestAttributesSequence
    requested_procedure_description: str  # nested: RequestAttributesSequence
    sequence_patient_id: str  # nested: OtherPatientIDsSequence
    sex: str  # "F" / "M": kept by de-identification, not a marker
    age_years: int  # kept as an age bucket, not a marker
    uids: list[str] = field(default_factory=list)

    @classmethod
    def from_seed(cls, seed: int) -> PlantedPHI:
        """Deterministic markers for ``seed``: the same seed gives the same patient."""
        rng = random.Random(f"radforge-phi-{seed}")
        birth = _date(rng, 1930, 1990)
        study = _date(rng, 2003, 2022)
        age = study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
        return cls(
            seed=seed,
            family_name=_marker(rng, "PHINAME"),
            given_name=_marker(rng, "PHIGIVEN"),
            patient_id=_marker(rng, "PHIID"),
            other_patient_id=_marker(rng, "PHIOID"),
            birth_date=birth.strftime("%Y%m%d"),
            study_date=study.strftime("%Y%m%d"),
            study_time=_time(rng),
            series_time=_time(rng),
            acquisition_time=_time(rng),
            content_time=_time(rng),
            accession_number=_marker(rng, "PHIACC"),
            institution_name=_marker(rng, "PHIINST"),
            institution_address=_marker(rng, "PHIADDR"),
            referring_physician=_marker(rng, "PHIREF"),
            performing_physician=_marker(rng, "PHIPERF"),
            operator=_marker(rng, "PHIOPER"),
            study_description=_marker(rng, "PHISTUDY"),
            series_description=_marker(rng, "PHISERIES"),
            image_comments=_marker(rng, "PHICOMMENT"),
            study_id=_marker(rng, "PHISID"),
            device_serial=_marker(rng, "PHIDEV"),
            private_value=_marker(rng, "PHIPRIV"),
            requested_procedure_id=_marker(rng, "PHIRPID"),
            requested_procedure_description=_marker(rng, "PHIRPD"),
            sequence_patient_id=_marker(rng, "PHISEQID"),
            sex=rng.choice(["F", "M"]),
            age_years=age,
        )

    @property
    def patient_name(self) -> str:
        """DICOM PN value ``FAMILY^GIVEN``."""
        return f"{self.family_name}^{self.given_name}"

    @property
    def folder_name(self) -> str:
        """Folder name a hospital export would use for this patient (it carries the name marker)."""
        return f"{self.family_name}_{self.given_name}"

    def record_uids(self, *uids: str) -> None:
        """Remember original UIDs written with this patient, so :meth:`markers` lists them."""
        for uid in uids:
            if uid and uid not in self.uids:
                self.uids.append(str(uid))

    def markers(self) -> list[str]:
        """Every string that must not appear in any output (values, dates, times and original UIDs)."""
        values = [
            self.family_name,
            self.given_name,
            self.patient_id,
            self.other_patient_id,
            self.birth_date,
            self.study_date,
            self.study_time,
            self.series_time,
            self.acquisition_time,
            self.content_time,
            self.accession_number,
            self.institution_name,
            self.institution_address,
            self.referring_physician,
            self.performing_physician,
            self.operator,
            self.study_description,
            self.series_description,
            self.image_comments,
            self.study_id,
            self.device_serial,
            self.private_value,
            self.requested_procedure_id,
            self.requested_procedure_description,
            self.sequence_patient_id,
            *self.uids,
        ]
        return list(dict.fromkeys(values))

    def plant(self, ds: Dataset) -> None:
        """Write every identifying value into ``ds`` (top level, private block and nested sequences)."""
        ds.PatientName = self.patient_name
        ds.PatientID = self.patient_id
        ds.OtherPatientIDs = self.other_patient_id
        ds.PatientBirthDate = self.birth_date
        ds.PatientSex = self.sex
        ds.PatientAge = f"{self.age_years:03d}Y"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = self.study_date
        ds.StudyTime = self.study_time
        ds.SeriesTime = self.series_time
        ds.AcquisitionTime = self.acquisition_time
        ds.ContentTime = self.content_time
        ds.AccessionNumber = self.accession_number
        ds.InstitutionName = self.institution_name
        ds.InstitutionAddress = f"{self.institution_address} 12 Example Street"
        ds.ReferringPhysicianName = f"{self.referring_physician}^DOCTOR"
        ds.PerformingPhysicianName = f"{self.performing_physician}^DOCTOR"
        ds.OperatorsName = f"{self.operator}^TECH"
        ds.StudyDescription = f"{self.study_description} THORAX ABDOMEN"
        ds.SeriesDescription = f"{self.series_description} AXIAL"
        ds.ImageComments = f"{self.image_comments} patient moved"
        ds.StudyID = self.study_id
        ds.DeviceSerialNumber = self.device_serial

        requested = Dataset()
        requested.RequestedProcedureID = self.requested_procedure_id
        requested.RequestedProcedureDescription = self.requested_procedure_description
        requested.ScheduledProcedureStepID = self.accession_number
        ds.RequestAttributesSequence = Sequence([requested])
        other_id = Dataset()
        other_id.PatientID = self.sequence_patient_id
        other_id.IssuerOfPatientID = self.institution_name
        other_id.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = Sequence([other_id])

        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(0x10, "LO", self.private_value)
        nested = Dataset()
        nested.PatientName = self.patient_name
        block.add_new(0x11, "SQ", Sequence([nested]))
