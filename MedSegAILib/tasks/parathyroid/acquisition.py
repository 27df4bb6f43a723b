"""Acquisition parameters of a planar NM image and the count-rate / decay corrections derived from them.

Metadata keys (``Volume.meta``), shared by the simulator (:mod:`MedSegAILib.simulate.planar_neck`) and the DICOM
reader (:func:`MedSegAILib.core.io.read_volume`):

``tracer``               radiopharmaceutical text ("Tc99m Sestamibi", "Sodium iodide I-123"...)
``radionuclide``         radionuclide text ("Tc-99m", "^123^Iodine"...)
``half_life_s``          radionuclide half-life, seconds
``frame_duration_s``     acquisition duration of the frame, seconds
``acquisition_start_s``  frame start, seconds after the injection (or ``acquisition_datetime`` /
                         ``injection_datetime`` as ISO text, from which it is computed)
``injected_MBq``         injected activity, MBq

Why correct at all? The subtraction scale factor ``k`` (``Tc ~ k I`` on the thyroid) is *estimated on the
thyroid itself* (:mod:`.subtraction`), so any global factor on either image is absorbed into ``k`` and the
subtraction image is the same with or without these corrections. What the corrections buy:

* ``k`` becomes physically interpretable: computed on count *rates at the start of each frame* it is the
  relative thyroid uptake of the two tracers per unit of detected rate, comparable between patients and
  protocols (different frame times, different delays after injection);
* the optional **late** sestamibi image (washout/retention) *needs* them: early and late frames usually have
  different durations, and 99mTc decays by about 21 % in the ~2 h between them. Retention is only meaningful
  on decay-corrected count rates.

Count-rate correction of one frame. A source of initial rate ``R0`` at the frame start, decaying with
``lambda = ln 2 / T_half`` and acquired for ``T`` seconds, yields ``C = R0 (1 - exp(-lambda T)) / lambda`` counts.
Hence the rate at the frame start is::

    R0 = C * f,    f = lambda / (1 - exp(-lambda T)) = [lambda T / (1 - exp(-lambda T))] / T

(``f -> 1/T`` when ``lambda T -> 0``). With only ``T`` known, ``f = 1/T`` (counts per second, no decay
correction); with nothing known, ``f = 1`` (counts) and a note says so. Decay between two frames (early ->
late) is ``exp(lambda (t_late - t_early))`` (:func:`late_decay_factor`).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from MedSegAILib.core.volume import Volume

#: Half-lives (s) of the radionuclides of this task, used when the header gives the nuclide but no half-life.
HALF_LIFE_S = {"Tc-99m": 21624.12, "I-123": 47604.0, "I-131": 692928.0}

TracerKind = Literal["sestamibi", "iodine"]


def _norm(text: Any) -> str:
    """Lower-case alphanumerics only: "^99m^Technetium" -> "99mtechnetium", "I-123" -> "i123"."""
    return "".join(ch for ch in str(text or "").lower() if ch.isalnum())


def _radionuclide_from_text(text: str) -> Optional[str]:
    t = _norm(text)
    if not t:
        return None
    if any(s in t for s in ("tc99m", "99mtc", "technetium", "tc99", "99technetium")):
        return "Tc-99m"
    if any(s in t for s in ("i123", "123i", "iodine123", "123iodine")):
        return "I-123"
    if any(s in t for s in ("i131", "131i", "iodine131", "131iodine")):
        return "I-131"
    return None


def radionuclide_of(vol: Volume) -> Optional[str]:
    """``"Tc-99m"``, ``"I-123"``, ``"I-131"`` or None, from the radionuclide (then the tracer) text in ``meta``."""
    meta = vol.meta if isinstance(vol, Volume) else dict(vol)
    for key in ("radionuclide", "tracer", "radiopharmaceutical"):
        found = _radionuclide_from_text(meta.get(key, ""))
        if found:
            return found
    return None


_SESTAMIBI_WORDS = ("sestamibi", "mibi", "methoxyisobutyl", "cardiolite", "tetrofosmin", "myoview")
_IODINE_WORDS = ("iodide", "iodine", "i123", "123i", "i131", "131i")
#: iodinated tracers that are NOT thyroid agents (would make the subtraction meaningless)
_NOT_THYROID_IODINE = ("mibg", "iobenguane", "ioflupane", "datscan", "fpcit", "hippuran", "iodohippurate")


def tracer_kind(vol: Volume) -> Optional[TracerKind]:
    """Which image of the protocol this is, from the header text: ``"sestamibi"``, ``"iodine"`` or None (unknown).

    Rules (case, spaces, hyphens and carets ignored, so "Tc-99m MIBI", "99mTc-sestamibi", "^123^Iodine",
    "Sodium Iodide I-123" all parse):

    * a sestamibi-like pharmaceutical name (sestamibi, MIBI, Cardiolite, tetrofosmin/Myoview) -> "sestamibi";
    * 123I/131I iodide, or an iodine radionuclide with no other pharmaceutical named -> "iodine", except for
      iodinated tracers that are not thyroid agents (MIBG, ioflupane, hippuran) -> None;
    * 99mTc with no pharmaceutical named, or named sestamibi-like -> "sestamibi"; 99mTc-pertechnetate -> None
      (a thyroid agent, but this task's thyroid image is 123I; use :func:`radionuclide_of` to tell the user
      that both images are 99mTc);
    * nothing recognisable -> None.
    """
    meta = vol.meta if isinstance(vol, Volume) else dict(vol)
    pharma = _norm(meta.get("tracer", "")) + _norm(meta.get("radiopharmaceutical", ""))
    nuclide = radionuclide_of(vol)
    if any(w in pharma for w in _SESTAMIBI_WORDS):
        return "sestamibi"
    if any(w in pharma for w in _NOT_THYROID_IODINE):
        return None
    if "pertechnetate" in pharma or "tco4" in pharma:
        return None
    if nuclide in ("I-123", "I-131") or any(w in pharma for w in _IODINE_WORDS):
        return "iodine"
    if nuclide == "Tc-99m":
        return "sestamibi"
    return None


# ---------------------------------------------------------------------------------------------- acquisition info
@dataclass
class AcquisitionInfo:
    """Acquisition parameters of one planar image; every field is None when the header does not say."""

    tracer: Optional[str] = None
    radionuclide: Optional[str] = None  #: normalised: "Tc-99m", "I-123", "I-131" or the header text
    half_life_s: Optional[float] = None
    frame_duration_s: Optional[float] = None
    acquisition_start_s: Optional[float] = None  #: frame start, seconds after the injection
    acquisition_datetime: Optional[_dt.datetime] = None
    injection_datetime: Optional[_dt.datetime] = None
    injected_MBq: Optional[float] = None
    kind: Optional[TracerKind] = None
    notes: list[str] = field(default_factory=list)  #: how values were obtained (e.g. half-life from the nuclide)

    @property
    def decay_constant(self) -> Optional[float]:
        """lambda = ln 2 / T_half (1/s)."""
        return math.log(2.0) / self.half_life_s if self.half_life_s else None


def _positive(value: Any) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _finite(value: Any) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _datetime(value: Any) -> Optional[_dt.datetime]:
    if isinstance(value, _dt.datetime):
        return value
    if not value:
        return None
    try:
        return _dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def acquisition_info(vol: Volume) -> AcquisitionInfo:
    """Read :class:`AcquisitionInfo` from ``vol.meta`` (see the module docstring for the keys)."""
    meta = vol.meta
    info = AcquisitionInfo()
    tracer = meta.get("tracer") or meta.get("radiopharmaceutical")
    info.tracer = str(tracer) if tracer else None
    info.radionuclide = radionuclide_of(vol) or (str(meta["radionuclide"]) if meta.get("radionuclide") else None)
    info.half_life_s = _positive(meta.get("half_life_s"))
    if info.half_life_s is None and info.radionuclide in HALF_LIFE_S:
        info.half_life_s = HALF_LIFE_S[info.radionuclide]
        info.notes.append(f"half-life of {info.radionuclide} taken from the radionuclide name")
    info.frame_duration_s = _positive(meta.get("frame_duration_s"))
    info.acquisition_datetime = _datetime(meta.get("acquisition_datetime"))
    info.injection_datetime = _datetime(meta.get("injection_datetime"))
    info.acquisition_start_s = _finite(meta.get("acquisition_start_s"))
    if info.acquisition_start_s is None and info.acquisition_datetime and info.injection_datetime:
        info.acquisition_start_s = (info.acquisition_datetime - info.injection_datetime).total_seconds()
    info.injected_MBq = _positive(meta.get("injected_MBq"))
    info.kind = tracer_kind(vol)
    return info


# ---------------------------------------------------------------------------------------------- corrections
def frame_rate_factor(info: AcquisitionInfo) -> tuple[float, str]:
    """(factor, what it does): counts x factor = count rate at the frame start (see the module docstring)."""
    T, lam = info.frame_duration_s, info.decay_constant
    if T is None:
        return 1.0, "no frame duration in the header: left in counts (no count-rate or decay correction)"
    if lam is None:
        return 1.0 / T, f"counts per second over the {T:g} s frame (half-life unknown: no decay correction)"
    x = lam * T
    # lambda / (1 - exp(-lambda T)), written with expm1 so that it stays exact when lambda T is tiny
    factor = lam / -math.expm1(-x)
    return factor, (f"count rate at the frame start: counts / {T:g} s x {x / -math.expm1(-x):.5f} "
                    f"(decay during the frame, half-life {info.half_life_s:g} s)")


@dataclass
class CorrectionFactors:
    """Multiplicative factors turning each image's counts into count rates at its frame start (1/s).

    ``tc_factor`` applies to the first image given to :func:`count_rate_correction` (the sestamibi image),
    ``iodine_factor`` to the second (the 123I image, or the late sestamibi image for retention).
    """

    tc_factor: float = 1.0
    iodine_factor: float = 1.0
    tc_correction: str = ""
    iodine_correction: str = ""
    corrections: list[str] = field(default_factory=list)  #: which corrections were possible ("rate", "decay")
    notes: list[str] = field(default_factory=list)  #: human messages (what could not be corrected and why)

    @property
    def both_rates(self) -> bool:
        """True when both images are in counts per second (so ``k`` is a ratio of rates)."""
        return self.tc_correction.startswith(("count rate", "counts per second")) and \
            self.iodine_correction.startswith(("count rate", "counts per second"))

    def rate_scale(self, k_counts: float) -> float:
        """The scale factor for count *rates* given the factor ``k`` fitted on raw counts (Tc = k I):
        ``Tc f_tc = k (f_tc / f_i) (I f_i)``."""
        return float(k_counts) * self.tc_factor / self.iodine_factor

    def describe(self, which: str) -> str:
        """Text for ``"tc"`` or ``"iodine"`` (the second image)."""
        return self.tc_correction if which == "tc" else self.iodine_correction


def count_rate_correction(info_tc: AcquisitionInfo, info_i: AcquisitionInfo,
                          names: tuple[str, str] = ("first image", "second image")) -> CorrectionFactors:
    """Count-rate and in-frame decay correction factors of the two images (see the module docstring).

    Both images are corrected independently, each to the start of its own frame. Nothing known gives factor 1
    with a note; the subtraction is unaffected either way (``k`` absorbs global factors), only the physical
    meaning of ``k`` and late-image retention depend on it.
    """
    f_tc, d_tc = frame_rate_factor(info_tc)
    f_i, d_i = frame_rate_factor(info_i)
    out = CorrectionFactors(tc_factor=f_tc, iodine_factor=f_i, tc_correction=d_tc, iodine_correction=d_i)
    for info, desc, name in ((info_tc, d_tc, names[0]), (info_i, d_i, names[1])):
        if desc.startswith("count rate"):
            out.corrections.append(f"{name}: count rate + decay during the frame")
        elif desc.startswith("counts per second"):
            out.corrections.append(f"{name}: count rate")
            out.notes.append(f"The {name} has no radionuclide half-life: no decay correction.")
        else:
            out.notes.append(f"The {name} has no frame duration in its header: its counts are used as they are "
                             "(the scale factor k then compares counts, not count rates).")
        out.notes.extend(f"{name}: {n}" for n in info.notes)
    return out


def late_decay_factor(info_early: AcquisitionInfo, info_late: AcquisitionInfo) -> Optional[float]:
    """``exp(lambda (t_late - t_early))``: multiply the late count rate by it to compare with the early one.

    Both images must be the same radionuclide; the times are frame starts (``acquisition_start_s``, or the
    acquisition date/times when the injection time is missing). None when it cannot be computed.
    """
    lam = info_early.decay_constant or info_late.decay_constant
    if lam is None:
        return None
    if info_early.radionuclide and info_late.radionuclide and info_early.radionuclide != info_late.radionuclide:
        return None
    if info_early.acquisition_start_s is not None and info_late.acquisition_start_s is not None:
        dt = info_late.acquisition_start_s - info_early.acquisition_start_s
    elif info_early.acquisition_datetime and info_late.acquisition_datetime:
        dt = (info_late.acquisition_datetime - info_early.acquisition_datetime).total_seconds()
    else:
        return None
    return math.exp(lam * dt)
