"""dicom_io.series_select: scanning folders (loop guard, junk files) and choosing the series by rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_io.errors import NotAnalyzedError, SelectionRulesError
from dicom_io.result import PLUGIN_MANUFACTURER, NotAnalyzedReason
from dicom_io.series_select import (
    DEFAULT_RULES_PATH,
    SelectionRules,
    load_selection_rules,
    scan_folder,
    select_series,
)

SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"
RULES = load_selection_rules()


def _only_study(folder: Path):
    return scan_folder(folder).single_study()


def _reason(study, rules: SelectionRules = RULES) -> NotAnalyzedError:
    with pytest.raises(NotAnalyzedError) as info:
        select_series(study, rules)
    return info.value


# --------------------------------------------------------------------------- scanning
def test_scan_groups_instances_by_study_and_series(tmp_path: Path, phantom_study) -> None:
    study_uid = generate_uid()
    a = phantom_study(tmp_path / "in" / "a", study_instance_uid=study_uid, n_slices=6)
    b = phantom_study(tmp_path / "in" / "deeper" / "b", study_instance_uid=study_uid, n_slices=5, slice_thickness=2.0)
    other = phantom_study(tmp_path / "in" / "c", n_slices=5)
    result = scan_folder(tmp_path / "in")
    assert set(result.studies) == {study_uid, other.study_instance_uid}
    study = result.studies[study_uid]
    assert {uid: s.n_instances for uid, s in study.series.items()} == {a.series_instance_uid: 6, b.series_instance_uid: 5}
    assert sorted(study.series[a.series_instance_uid].paths) == sorted(a.paths)
    assert result.skipped == []


def test_scan_skips_non_dicom_and_our_own_outputs_with_a_reason(tmp_path: Path, phantom_study) -> None:
    source = phantom_study(tmp_path / "in" / "ct", n_slices=5)
    ours = phantom_study(tmp_path / "in" / "out", n_slices=2, manufacturer=PLUGIN_MANUFACTURER, study_instance_uid=source.study_instance_uid)
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    (tmp_path / "in" / "empty.dcm").write_bytes(b"")
    (tmp_path / "in" / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    shutil.copy(source.paths[0], tmp_path / "in" / "copy-of-first.dcm")  # same SOP Instance UID again

    result = scan_folder(tmp_path / "in")
    reasons = {path.relative_to(tmp_path / "in").as_posix(): why for path, why in result.skipped}
    assert [p.relative_to(tmp_path / "in").as_posix() for p in ours.paths] == ["out/CT000001.dcm", "out/CT000002.dcm"]
    assert "loop guard" in reasons["out/CT000001.dcm"] and "loop guard" in reasons["out/CT000002.dcm"]
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "empty.dcm" in reasons and "fake.dcm" in reasons
    # the copy sorts first (top-level files before sub-folders), so the original is the repeat
    assert "duplicate SOP Instance UID" in reasons["ct/CT000001.dcm"]
    assert len(result.skipped) == 6
    study = result.single_study()
    assert [s.n_instances for s in study.series.values()] == [5]  # only the source series, our SCs skipped


def test_single_study_refuses_two_studies_and_no_study(tmp_path: Path, phantom_study) -> None:
    one = phantom_study(tmp_path / "in" / "a", n_slices=5)
    two = phantom_study(tmp_path / "in" / "b", n_slices=5)
    with pytest.raises(NotAnalyzedError) as info:
        scan_folder(tmp_path / "in").single_study()
    assert info.value.reason is NotAnalyzedReason.MULTIPLE_STUDIES
    assert one.study_instance_uid in info.value.message and two.study_instance_uid in info.value.message

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hello")
    with pytest.raises(NotAnalyzedError) as info:
        scan_folder(tmp_path / "junk").single_study()
    assert info.value.reason is NotAnalyzedReason.NO_DICOM


# --------------------------------------------------------------------------- choosing a series
def test_ct_is_chosen_over_mr(tmp_path: Path, phantom_study) -> None:
    uid = generate_uid()
    phantom_study(tmp_path / "in" / "mr", study_instance_uid=uid, modality="MR", n_slices=20, series_number=1)
    ct = phantom_study(tmp_path / "in" / "ct", study_instance_uid=uid, n_slices=6, series_number=2)
    assert select_series(_only_study(tmp_path / "in"), RULES).series_instance_uid == ct.series_instance_uid


def test_mr_only_study_is_wrong_modality(tmp_path: Path, phantom_study) -> None:
    mr = phantom_study(tmp_path / "in", modality="MR", n_slices=10)
    err = _reason(_only_study(tmp_path / "in"))
    assert err.reason is NotAnalyzedReason.WRONG_MODALITY
    assert mr.study_instance_uid in err.message and mr.series_instance_uid in err.message and "Modality" in err.message


def test_localizer_only_study(tmp_path: Path, phantom_study) -> None:
    uid = generate_uid()
    phantom_study(tmp_path / "in" / "scout", study_instance_uid=uid, n_slices=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    phantom_study(tmp_path / "in" / "scout2", study_instance_uid=uid, n_slices=8, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    err = _reason(_only_study(tmp_path / "in"))
    assert err.reason is NotAnalyzedReason.LOCALIZER_ONLY
    assert uid in err.message


def test_too_few_slices(tmp_path: Path, phantom_study) -> None:
    uid = generate_uid()
    phantom_study(tmp_path / "in" / "scout", study_instance_uid=uid, n_slices=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    phantom_study(tmp_path / "in" / "ct", study_instance_uid=uid, n_slices=3)
    err = _reason(_only_study(tmp_path / "in"))
    assert err.reason is NotAnalyzedReason.TOO_FEW_SLICES
    assert "3 slice position(s) < 5" in err.message


def test_minimum_slices_is_configurable(tmp_path: Path, phantom_study) -> None:
    phantom_study(tmp_path / "in", n_slices=3)
    data = json.loads(DEFAULT_RULES_PATH.read_text())
    data["selections"][0]["ich_triage"]["min_slices"] = 3
    assert select_series(_only_study(tmp_path / "in"), SelectionRules.from_dict(data)) is not None


def test_repeated_positions_do_not_count_as_slices(tmp_path: Path, phantom_study) -> None:
    # 3 positions x 2 (e.g. a repeated acquisition in one series) is still 3 slices
    series = phantom_study(tmp_path / "in", n_slices=3)
    for i, path in enumerate(series.paths):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = 10 + i
        ds.save_as(path.with_name(f"again{i}.dcm"))
    assert _reason(_only_study(tmp_path / "in")).reason is NotAnalyzedReason.TOO_FEW_SLICES


@pytest.mark.parametrize("agent", ["IOHEXOL 350", "Omnipaque"])
def test_contrast_agent_rejects_the_series(tmp_path: Path, phantom_study, agent: str) -> None:
    phantom_study(tmp_path / "in", n_slices=6, contrast_agent=agent)
    err = _reason(_only_study(tmp_path / "in"))
    assert err.reason is NotAnalyzedReason.NO_USABLE_SERIES
    assert "Contrast/Bolus Agent" in err.message and agent in err.message


@pytest.mark.parametrize("agent", ["", "NONE", "no contrast", None])
def test_absent_empty_or_none_contrast_agent_is_accepted(tmp_path: Path, phantom_study, agent: str | None) -> None:
    series = phantom_study(tmp_path / "in", n_slices=6, contrast_agent=agent)
    assert select_series(_only_study(tmp_path / "in"), RULES).series_instance_uid == series.series_instance_uid


def test_non_contrast_series_is_chosen_over_contrast_series(tmp_path: Path, phantom_study) -> None:
    uid = generate_uid()
    phantom_study(tmp_path / "in" / "post", study_instance_uid=uid, n_slices=10, contrast=True, series_number=1)
    pre = phantom_study(tmp_path / "in" / "pre", study_instance_uid=uid, n_slices=6, series_number=2)
    assert select_series(_only_study(tmp_path / "in"), RULES).series_instance_uid == pre.series_instance_uid


def test_gantry_tilt_up_to_the_limit(tmp_path: Path, phantom_study) -> None:
    tilted = phantom_study(tmp_path / "ok", n_slices=6, tilt_deg=25.0)
    assert select_series(_only_study(tmp_path / "ok"), RULES).series_instance_uid == tilted.series_instance_uid
    phantom_study(tmp_path / "too", n_slices=6, tilt_deg=40.0)
    err = _reason(_only_study(tmp_path / "too"))
    assert err.reason is NotAnalyzedReason.NO_USABLE_SERIES and "gantry tilt 40.0 deg > 30 deg" in err.message


def test_slice_thickness_outside_the_range_is_rejected(tmp_path: Path, phantom_study) -> None:
    phantom_study(tmp_path / "in", n_slices=6, slice_thickness=12.0)
    err = _reason(_only_study(tmp_path / "in"))
    assert err.reason is NotAnalyzedReason.NO_USABLE_SERIES and "SliceThickness" in err.message


def test_coronal_series_is_not_axial(tmp_path: Path, phantom_study) -> None:
    series = phantom_study(tmp_path / "in", n_slices=6)
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.save_as(path)
    err = _reason(_only_study(tmp_path / "in"))
    assert err.reason is NotAnalyzedReason.NO_USABLE_SERIES and "orientation Coronal, not Axial" in err.message


def test_preference_thickness_near_target_then_slices_then_number(tmp_path: Path, phantom_study) -> None:
    uid = generate_uid()
    phantom_study(tmp_path / "in" / "thin", study_instance_uid=uid, n_slices=40, slice_thickness=1.0, series_number=3)
    five = phantom_study(tmp_path / "in" / "five", study_instance_uid=uid, n_slices=8, slice_thickness=5.0, series_number=4)
    phantom_study(tmp_path / "in" / "five-short", study_instance_uid=uid, n_slices=6, slice_thickness=5.0, series_number=2)
    study = _only_study(tmp_path / "in")
    assert select_series(study, RULES).series_instance_uid == five.series_instance_uid  # 5 mm, most slices
    # a caller aiming at 1 mm slabs gets the thin series
    assert select_series(study, RULES, target_thickness_mm=1.0).series_number == 3


def test_tie_goes_to_the_lowest_series_number(tmp_path: Path, phantom_study) -> None:
    uid = generate_uid()
    phantom_study(tmp_path / "in" / "b", study_instance_uid=uid, n_slices=6, series_number=7)
    phantom_study(tmp_path / "in" / "a", study_instance_uid=uid, n_slices=6, series_number=3)
    assert select_series(_only_study(tmp_path / "in"), RULES).series_number == 3


def test_bone_kernel_series_is_deprioritized(tmp_path: Path, phantom_study) -> None:
    uid = generate_uid()
    phantom_study(tmp_path / "in" / "bone", study_instance_uid=uid, n_slices=8, series_number=1, series_description="HEAD BONE 5mm")
    soft = phantom_study(tmp_path / "in" / "soft", study_instance_uid=uid, n_slices=8, slice_thickness=2.5, series_number=2)
    assert select_series(_only_study(tmp_path / "in"), RULES).series_instance_uid == soft.series_instance_uid


# --------------------------------------------------------------------------- rules
def test_default_rules_file_is_sdk_format_with_our_extensions() -> None:
    data = json.loads(DEFAULT_RULES_PATH.read_text())
    assert isinstance(data["selections"], list) and all("conditions" in s for s in data["selections"])
    rules = load_selection_rules(DEFAULT_RULES_PATH)
    selection = rules.selections[0]
    assert (selection.min_slices, selection.max_tilt_deg, selection.reject_contrast_agent) == (5, 30, True)
    assert rules.target_slice_thickness_mm == 5.0


def test_sdk_example_rules_parse_and_match() -> None:
    # the example rules from the SDK's DICOMSeriesSelectorOperator docstring
    sdk_rules = {
        "selections": [
            {"name": "CT Series 1", "conditions": {"StudyDescription": "(?i)^Spleen", "Modality": "(?i)CT", "SeriesDescription": "(?i)^No series description|(.*?)"}},
            {"name": "CT Series 3", "conditions": {"StudyDescription": "(.*?)", "Modality": "(?i)CT", "ImageType": ["PRIMARY", "ORIGINAL", "AXIAL"], "SliceThickness": [3, 5]}},
            {"name": "CT Series 4", "conditions": {"StudyDescription": "(.*?)", "Modality": "(?i)CT", "ImageOrientationPatient": "Axial", "SliceThickness": [2, ">"]}},
            {"name": "CT Series 5", "conditions": {"StudyDescription": "(.*?)", "Modality": "(?i)CT", "ImageType": ["PRIMARY", "!SECONDARY"]}},
        ]
    }
    rules = SelectionRules.from_dict(sdk_rules)
    assert [s.name for s in rules.selections] == ["CT Series 1", "CT Series 3", "CT Series 4", "CT Series 5"]


def test_sdk_matching_semantics(tmp_path: Path, phantom_study) -> None:
    series = phantom_study(tmp_path / "in", n_slices=6, slice_thickness=5.0, series_description="Head routine", study_description="CT HEAD WO")
    study = _only_study(tmp_path / "in")

    def matches(conditions: dict) -> bool:
        rules = SelectionRules.from_dict({"selections": [{"name": "t", "conditions": conditions}]})
        try:
            return select_series(study, rules).series_instance_uid == series.series_instance_uid
        except NotAnalyzedError:
            return False

    assert matches({"SeriesDescription": "head ROUTINE"})  # equal ignoring case
    assert matches({"StudyDescription": "(?i)^ct head"})  # regex search
    assert not matches({"StudyDescription": "^HEAD"})
    assert matches({"SliceThickness": [3, 5]}) and not matches({"SliceThickness": [5.5, 10]})  # inclusive range
    assert matches({"SliceThickness": [4, ">"]}) and not matches({"SliceThickness": [5, ">"]})  # relational
    assert matches({"SliceThickness": 5}) and matches({"SliceThickness": "5"}) and not matches({"SliceThickness": 2.5})
    assert matches({"ImageType": ["ORIGINAL", "!LOCALIZER"]}) and not matches({"ImageType": ["!AXIAL"]})
    assert matches({"Modality": "CT", "BodyPartExamined": ""})  # an empty condition is ignored
    assert not matches({"ContrastBolusAgent": "(.*?)"})  # an absent attribute fails its condition


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"selections": []},
        {"selections": [{"name": "x", "conditions": {"Modality": "C(T"}}]},
        {"selections": [{"name": "x", "conditions": {"SliceThickness": [5, "=>"]}}]},
        {"selections": [{"name": "x", "conditions": {"SliceThickness": [10, 1]}}]},
        {"selections": [{"name": "x", "conditions": {"ImageOrientationPatient": "Oblique"}}]},
        {"selections": [{"name": "x", "conditions": {"Modality": "CT"}, "ich_triage": {"min_slices": 0}}]},
        {"selections": [{"name": "x", "conditions": {"Modality": "CT"}, "ich_triage": {"max_tilt": 10}}]},
        {"selections": [{"name": "x", "conditions": {"Modality": "CT"}}], "ich_triage": {"deprioritize": {"SeriesDescription": "("}}},
    ],
    ids=["no-selections", "empty", "bad-regex", "bad-operator", "bad-range", "bad-orientation", "min-slices", "unknown-ext", "bad-deprioritize"],
)
def test_invalid_rules_are_refused(data: dict) -> None:
    with pytest.raises(SelectionRulesError):
        SelectionRules.from_dict(data)


def test_unreadable_rules_file(tmp_path: Path) -> None:
    bad = tmp_path / "rules.json"
    bad.write_text("{not json")
    with pytest.raises(SelectionRulesError, match="not valid JSON"):
        load_selection_rules(bad)
    with pytest.raises(SelectionRulesError, match="cannot read"):
        load_selection_rules(tmp_path / "missing.json")


# --------------------------------------------------------------------------- the real series
@pytest.mark.skipif(not (SHARED_DATA / "cq500-dicom").is_dir(), reason="shared CQ500 data not present")
def test_real_cq500_series_is_selected_despite_its_description() -> None:
    folder = SHARED_DATA / "cq500-dicom" / "CQ500-CT-0"
    study = _only_study(folder)
    series = select_series(study, RULES)
    # The description reads like an injection protocol, but there is no Contrast/Bolus Agent: the default
    # rules key on the structured attribute only, so this real non-contrast series runs end to end.
    assert "cc" in series.series_description
    assert all("ContrastBolusAgent" not in ds for ds in series.datasets)
    assert series.n_instances == len(list(folder.glob("*.dcm")))


@pytest.mark.skipif(not (SHARED_DATA / "cq500-dicom").is_dir(), reason="shared CQ500 data not present")
def test_real_single_slice_study_has_too_few_slices() -> None:
    err = _reason(_only_study(SHARED_DATA / "cq500-dicom" / "CQ500-CT-1"))
    assert err.reason is NotAnalyzedReason.TOO_FEW_SLICES


# --------------------------------------------------------------------------- the SDK's own matcher agrees
@pytest.mark.slow
def test_default_rules_select_the_same_series_in_the_sdk_selector(tmp_path: Path, phantom_study) -> None:
    """The shipped rules file is valid SDK input: the SDK's DICOMSeriesSelectorOperator loads it (ignoring our
    ``ich_triage`` extensions) and picks the same CT series among CT, MR and localizer series."""
    selector_module = pytest.importorskip("monai.deploy.operators.dicom_series_selector_operator")
    loader_module = pytest.importorskip("monai.deploy.operators.dicom_data_loader_operator")
    from monai.deploy.core import Fragment

    uid = generate_uid()
    ct = phantom_study(tmp_path / "in" / "ct", study_instance_uid=uid, n_slices=6, series_description="ct")
    phantom_study(tmp_path / "in" / "mr", study_instance_uid=uid, n_slices=6, modality="MR", series_description="mr")
    phantom_study(tmp_path / "in" / "scout", study_instance_uid=uid, n_slices=6, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_description="scout")

    fragment = Fragment()
    loader = loader_module.DICOMDataLoaderOperator(fragment, name="loader")
    selector = selector_module.DICOMSeriesSelectorOperator(fragment, name="selector")
    studies = loader.load_data_to_studies(tmp_path / "in")
    chosen = selector.filter(json.loads(DEFAULT_RULES_PATH.read_text()), studies, all_matched=True)
    sdk_uids = [s.series.SeriesInstanceUID for study in chosen for s in study.selected_series]
    assert sdk_uids == [ct.series_instance_uid]
    assert select_series(_only_study(tmp_path / "in"), RULES).series_instance_uid == ct.series_instance_uid


def test_not_analyzed_error_survives_pickling_between_processes() -> None:
    import pickle

    err = NotAnalyzedError(NotAnalyzedReason.TOO_FEW_SLICES, "study 1.2.3: 2 slices", study_instance_uid="1.2.3")
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.message, back.study_instance_uid, str(back)) == (err.reason, err.message, "1.2.3", str(err))
    with pytest.raises(TypeError):
        NotAnalyzedError("too_few_slices", "a plain string is not a reason")  # type: ignore[arg-type]
