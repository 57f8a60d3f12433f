"""Dataset loaders on layout-exact fixtures, `nightseg data check`, transforms and photometric augmentation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from fixtures_datasets import (
    BDD_DAY_ID,
    BUILDERS,
    CHECK_DEFECTS,
    ND_VALUES,
    NIGHTCITY_PLUS_VALUES,
    H,
    W,
    bdd_night_ids,
    dark_zurich_rows,
    image,
    label,
    lines,
    make_acdc,
    make_bdd100k,
    make_cityscapes,
    make_dark_zurich,
    make_folder,
    make_nightcity,
    make_nighttime_driving,
    plant,
)
from nightseg.core.errors import UserError
from nightseg.data import (
    ACDC,
    BDD100K,
    DATASET_NAMES,
    DATASETS,
    Cityscapes,
    DarkZurich,
    DarkZurichPairs,
    FolderDataset,
    NightCity,
    NightCityPlus,
    NighttimeDriving,
    build_dataset,
    denormalize_imagenet,
    normalize_imagenet,
    train_transform,
)
from nightseg.data.check import SELECTION_FLAGS, check_dataset, selection_options
from nightseg.data.photometric import StrongConfig, WeakConfig, gaussian_blur, strong_augment, weak_augment
from nightseg.data.transforms import RandomScaleCrop, Resize


def _check_contract(sample, labelled=True):
    img = sample["image"]
    assert img.dtype == torch.float32 and img.dim() == 3 and img.shape[0] == 3
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert isinstance(sample["name"], str) and isinstance(sample["path"], str)
    if labelled:
        lab = sample["label"]
        assert lab.dtype == torch.int64 and lab.shape == img.shape[1:]
        values = set(lab.unique().tolist())
        assert values <= set(range(19)) | {255}


# ------------------------------------------------------------------------------------------- Cityscapes
def test_cityscapes_real_sample_label_ids_map_to_official_train_ids(tmp_path, realdata):
    make_cityscapes(tmp_path, realdata)
    ds = Cityscapes(tmp_path, "val")
    assert len(ds) == 1
    sample = ds[0]
    _check_contract(sample)
    assert sample["name"] == "frankfurt_000000_000294"
    real = realdata / "cityscapes_samples/tiny_128x256_with_gt"
    ids = np.asarray(Image.open(real / "gtFine/frankfurt_000000_000294_gtFine_labelIds.png"))
    table = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
             26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    expected = np.vectorize(lambda v: table.get(int(v), 255))(ids)
    assert sample["label"].shape == (128, 256)
    assert np.array_equal(sample["label"].numpy(), expected)  # labelIds -> trainIds on the fly
    # the sample's own labelTrainIds file was downscaled separately: it agrees except on a few edge pixels
    official = np.asarray(Image.open(real / "gtFine/frankfurt_000000_000294_gtFine_labelTrainIds.png"))
    assert (sample["label"].numpy() == official).mean() > 0.995
    rgb = np.array(Image.open(real / "leftImg8bit/frankfurt_000000_000294_leftImg8bit.png").convert("RGB"))
    assert torch.allclose(sample["image"], torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)


def test_cityscapes_splits_counts_and_names(tmp_path, realdata):
    make_cityscapes(tmp_path, realdata)
    train = Cityscapes(tmp_path, "train")
    names = [Record.name for Record in train.records]
    first = lines(realdata, "cityscapes_train.txt")
    assert names == sorted(r.split("/")[1].removesuffix("_leftImg8bit.png") for r in (first[0], first[1], first[-1]))
    sample = train[0]
    _check_contract(sample)
    # bands of labelIds (0, 4, 7, 8, 21, 23, 26) -> trainIds (255, 255, 0, 1, 8, 10, 13)
    assert sorted(sample["label"].unique().tolist()) == [0, 1, 8, 10, 13, 255]
    test = Cityscapes(tmp_path, "test")
    assert len(test) == 1 and "label" not in test[0] and test[0]["name"] == "berlin_000000_000019"


# ------------------------------------------------------------------------------------------- Dark Zurich
def test_dark_zurich_pairs_follow_the_real_csv(tmp_path, realdata):
    make_dark_zurich(tmp_path, realdata)
    ds = DarkZurichPairs(tmp_path)
    rows = dark_zurich_rows(realdata)
    assert len(ds) == 3
    got = sorted((r.name, r.meta["day_name"]) for r in ds.records)
    assert got == sorted((n.split("/")[-1], d.split("/")[-1]) for n, d in rows)
    sample = ds[0]
    assert set(sample) == {"night", "day", "name", "day_name", "path"}
    assert sample["name"] == "GOPR0351_frame_000001" and sample["day_name"] == "GOPR0345_frame_000081"
    assert sample["night"].dtype == torch.float32 and sample["day"].shape == sample["night"].shape
    assert not torch.equal(sample["night"], sample["day"])


def test_dark_zurich_pair_geometry_shared_or_independent(tmp_path, realdata):
    make_dark_zurich(tmp_path, realdata)
    night, day = dark_zurich_rows(realdata)[0]
    same = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    image(tmp_path / "rgb_anon" / f"{night}_rgb_anon.png", value=same)
    image(tmp_path / "rgb_anon" / f"{day}_rgb_anon.png", value=same)
    t = train_transform(crop_size=(16, 24), scale_range=(0.6, 1.4))
    shared = DarkZurichPairs(tmp_path, transform=t)
    independent = DarkZurichPairs(tmp_path, transform=t, pair_geometry="independent")
    differs = 0
    for seed in range(6):
        torch.manual_seed(seed)
        s = shared[0]
        assert s["night"].shape == (3, 16, 24) and torch.equal(s["night"], s["day"])
        torch.manual_seed(seed)
        i = independent[0]
        differs += not torch.equal(i["night"], i["day"])
    assert differs >= 4


def test_dark_zurich_val_labels_invalid_masks_test_and_twilight(tmp_path, realdata):
    make_dark_zurich(tmp_path, realdata, twilight=True)
    val = DarkZurich(tmp_path, "val")
    assert [r.name for r in val.records] == [
        line.split("/")[-1].removesuffix("_rgb_anon.png") for line in lines(realdata, "zurich_val.txt")[:3]]
    sample = val[0]
    _check_contract(sample)
    assert sample["name"] == "GOPR0356_frame_000321"
    assert sample["invalid"].dtype == torch.bool and sample["invalid"].shape == (H, W)
    assert sample["invalid"][:, : W // 4].all() and not sample["invalid"][:, W // 4 :].any()
    assert sorted(sample["label"].unique().tolist()) == [0, 1, 2, 8, 13, 255]
    test = DarkZurich(tmp_path, "test")
    assert len(test) == 2 and "label" not in test[0]
    assert len(DarkZurich(tmp_path, "train", condition="twilight")) == 1
    assert len(DarkZurich(tmp_path, "train", condition="day")) == 2  # two distinct day frames in the rows


def test_dark_zurich_pairs_without_csv_says_where(tmp_path, realdata):
    make_dark_zurich(tmp_path, realdata)
    (tmp_path / "zurich_dn_pair_train.csv").unlink()
    with pytest.raises(UserError, match="zurich_dn_pair_train.csv"):
        DarkZurichPairs(tmp_path)


# ------------------------------------------------------------------------------------------- ACDC
def test_acdc_conditions_labels_invalid_and_reference_pairs(tmp_path):
    make_acdc(tmp_path)
    night = ACDC(tmp_path, "train")
    assert [r.name for r in night.records] == ["GOPR0351_frame_000159"]
    every = ACDC(tmp_path, "train", conditions="all", with_reference=True)
    assert sorted(r.meta["condition"] for r in every.records) == ["fog", "night", "rain"]
    sample = every[0]
    assert set(sample) == {"image", "label", "invalid", "reference", "name", "condition", "path"}
    _check_contract(sample)
    assert sample["reference"].shape == sample["image"].shape and sample["reference"].dtype == torch.float32
    assert sample["invalid"][: H // 3].all() and not sample["invalid"][H // 3 :].any()
    t = train_transform(crop_size=20, scale_range=(0.8, 1.2))
    torch.manual_seed(3)
    out = ACDC(tmp_path, "train", conditions=["fog"], with_reference=True, transform=t)[0]
    assert out["image"].shape == out["reference"].shape == (3, 20, 20) and out["invalid"].shape == (20, 20)
    (tmp_path / "rgb_anon/rain/train_ref/GOPR0400/GOPR0400_frame_000216_rgb_ref_anon.png").unlink()
    with pytest.raises(UserError, match="GOPR0400_frame_000216_rgb_anon.png: no reference"):
        ACDC(tmp_path, "train", conditions="rain", with_reference=True)


# ------------------------------------------------------------------------------------------- others
def test_nighttime_driving_real_names(tmp_path, realdata):
    make_nighttime_driving(tmp_path, realdata)
    ds = NighttimeDriving(tmp_path)
    expected = [n.split("/")[-1].removesuffix("_leftImg8bit.png") for n in lines(realdata, "leftImg8bit_filenames.txt")[:3]]
    assert [r.name for r in ds.records] == sorted(expected)
    # each fixture label has its own trainIds (ND_VALUES, in list order): stored as trainIds, read unchanged
    values = dict(zip(expected, ND_VALUES))
    for i, record in enumerate(ds.records):
        sample = ds[i]
        _check_contract(sample)
        assert record.label.name == f"{record.name}_gtCoarse_labelTrainIds.png"
        assert sorted(sample["label"].unique().tolist()) == sorted(values[sample["name"]])
        assert np.array_equal(sample["label"].numpy(), np.asarray(Image.open(record.label)))


def test_nightcity_label_encodings_and_nightcity_plus(tmp_path):
    make_nightcity(tmp_path / "ids")
    train = NightCity(tmp_path / "ids", "train")
    assert len(train) == 2 and len(NightCity(tmp_path / "ids", "val")) == 1
    assert sorted(train[0]["label"].unique().tolist()) == [0, 1, 8, 10, 13, 255]  # labelIds mapped
    make_nightcity(tmp_path / "tid", suffix="_trainIds.png")
    assert sorted(NightCity(tmp_path / "tid", "train")[0]["label"].unique().tolist()) == [0, 1, 2, 8, 13, 255]
    relabelled = tmp_path / "plus_labels"
    label(relabelled / "LosAngeles_0007_labelIds.png", (26,), 32, 64)  # all car
    plus = NightCityPlus(tmp_path / "ids", label_dir=relabelled)
    assert plus.split == "val" and plus[0]["label"].unique().tolist() == [13]


def test_bdd100k_night_subset_by_timeofday_and_by_list(tmp_path, realdata):
    make_bdd100k(tmp_path, realdata)
    ids = bdd_night_ids(realdata)
    everything = BDD100K(tmp_path, "train")
    assert sorted(r.name for r in everything.records) == sorted([*ids["train"], BDD_DAY_ID])
    night = BDD100K(tmp_path, "train", timeofday="night")
    assert sorted(r.name for r in night.records) == ids["train"]
    sample = night[0]
    _check_contract(sample)
    real = np.asarray(Image.open(realdata / "bdd100k_night/night_labels_train_id/train" / f"{sample['name']}_train_id.png"))
    assert np.array_equal(sample["label"].numpy(), real)
    names = tmp_path / "night.txt"
    names.write_text(f"{ids['train'][1]}.jpg\n")
    assert [r.name for r in BDD100K(tmp_path / "bdd100k", "train", night_list=names).records] == [ids["train"][1]]
    make_bdd100k(tmp_path / "legacy", realdata, legacy=True)
    assert len(BDD100K(tmp_path / "legacy", "val")) == 1


def test_folder_dataset_with_class_mapping(tmp_path):
    make_folder(tmp_path)
    ds = FolderDataset(tmp_path, "train")
    assert [r.name for r in ds.records] == ["street_a", "street_b", "street_c"]
    # mapping 0: ignore, 1: road, 2: car, 3: 10 (sky)
    assert sorted(ds[0]["label"].unique().tolist()) == [0, 10, 13, 255]
    (tmp_path / "classes.yaml").write_text("mapping:\n  0: lamp\n")
    with pytest.raises(UserError, match="classes.yaml: unknown class 'lamp'"):
        FolderDataset(tmp_path, "train")


def test_build_dataset_factory_names(tmp_path, realdata):
    make_cityscapes(tmp_path, realdata)
    assert set(DATASET_NAMES) >= {"cityscapes", "dark_zurich", "dark_zurich_pairs", "acdc", "nighttime_driving",
                                  "nightcity", "nightcity+", "bdd100k", "folder"}
    assert isinstance(build_dataset("Cityscapes", tmp_path, "val"), Cityscapes)
    with pytest.raises(UserError, match="unknown dataset 'kitti'"):
        build_dataset("kitti", tmp_path, "val")


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_wrong_root_names_the_expected_layout(tmp_path, name):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(UserError) as info:
        build_dataset(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "expected" in message and "docs/datasets.md" in message


# ------------------------------------------------------------------------------------------- bad input
def test_bad_files_raise_naming_the_file_or_are_skipped(tmp_path, realdata, caplog):
    tree = make_cityscapes(tmp_path, realdata)
    bad = plant(tree, "corrupt_image", 0)
    ds = Cityscapes(tmp_path, "train")
    index = [r.image for r in ds.records].index(bad)
    with pytest.raises(UserError, match=str(bad)):
        ds[index]
    skipping = Cityscapes(tmp_path, "train", skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="nightseg.data"):
        assert skipping[index]["name"] == skipping.records[(index + 1) % 3].name
        skipping[index]  # a known-bad sample is skipped silently the second time
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"skipping bad sample: {bad}: cannot decode image")
    lab = plant(tree, "unknown_value", 1)
    with pytest.raises(UserError, match=rf"{lab}: unknown label values \[200\]"):
        Cityscapes(tmp_path, "train")[[r.label for r in ds.records].index(lab)]
    (tree.labelled[2][1]).unlink()
    with pytest.raises(UserError, match="no label"):
        Cityscapes(tmp_path, "train")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nightseg.data"):
        assert len(Cityscapes(tmp_path, "train", skip_bad=True)) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"Cityscapes train: skipping 1 incomplete samples, first: {tree.labelled[2][0]}: no label "
                        f"(expected {tree.labelled[2][1]})"]


def test_gray_rgba_and_16bit_images_load_as_rgb(tmp_path, realdata):
    tree = make_cityscapes(tmp_path, realdata)
    gray = np.full((H, W), 128, dtype=np.uint8)
    Image.fromarray(gray).save(tree.labelled[0][0])
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., 1], rgba[..., 3] = 255, 7
    Image.fromarray(rgba).save(tree.labelled[1][0])
    Image.fromarray(np.full((H, W), 65535, dtype=np.uint16)).save(tree.labelled[2][0])
    ds = Cityscapes(tmp_path, "train")
    by_path = {r.image: i for i, r in enumerate(ds.records)}
    g, a, d = (ds[by_path[tree.labelled[i][0]]]["image"] for i in range(3))
    assert g.shape == (3, H, W) and torch.allclose(g, torch.full_like(g, 128 / 255))
    assert a[:, 0, 0].tolist() == [0.0, 1.0, 0.0]
    assert torch.allclose(d, torch.ones_like(d))


# ------------------------------------------------------------------------------------------- data check
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_data_check_clean_fixture(tmp_path, realdata, run_cli, name):
    BUILDERS[name](tmp_path, realdata)
    result = run_cli("data", "check", name, tmp_path)
    assert result.code == 0, result.out + result.err
    assert "result: clean" in result.out and "image sizes:" in result.out


def _defect_lines(out: str) -> list[str]:
    assert "DEFECTS" in out, out
    return [line.strip() for line in out.split("DEFECTS", 1)[1].splitlines()[1:] if line.startswith("  ")]


@pytest.mark.parametrize(("name", "defect"), [(n, d) for n in sorted(CHECK_DEFECTS) for d in CHECK_DEFECTS[n]])
def test_data_check_reports_planted_defect(tmp_path, realdata, run_cli, name, defect):
    tree = BUILDERS[name](tmp_path, realdata)
    path = plant(tree, defect)
    result = run_cli("data", "check", name, tmp_path)
    assert result.code == 1, result.out + result.err
    defect_lines = _defect_lines(result.out)
    assert len(defect_lines) == 1, result.out
    img = tree.labelled[0][0] if tree.labelled else None
    expected = {
        "missing_label": f"{path}: no label (expected {tree.labelled[0][1] if tree.labelled else ''})",
        "size_mismatch": f"{path}: label is",
        "unknown_value": f"{path}: unknown label values [{tree.unknown_value}]",
        "corrupt_image": f"{path}: cannot decode image",
        "missing_invalid": f"{path}: no invalid (expected {tree.invalid.get(img)})",
        "invalid_size_mismatch": f"{path}: invalid mask is {W}x{H + 2} but its image {img and img.name} is {W}x{H}",
        "missing_reference": f"{path}: no reference (expected {tree.references.get(img)})",
        "reference_size_mismatch": f"{path}: reference image is {W}x{H + 2} but its image {img and img.name} is {W}x{H}",
        "corrupt_reference": f"{path}: cannot decode image",
        "corrupt_night": f"{path}: cannot decode image",
        "corrupt_day": f"{path}: cannot decode image",
    }[defect]
    assert defect_lines[0].startswith(expected), defect_lines[0]
    skipping = run_cli("data", "check", name, tmp_path, "--skip-bad")
    assert skipping.code == 0 and "with --skip-bad these samples are skipped" in skipping.out
    assert _defect_lines(skipping.out) == defect_lines  # the skipped file is named


def test_nightcity_plus_fixture_reads_the_relabelled_val_maps(tmp_path, run_cli):
    tree = BUILDERS["nightcity+"](tmp_path)
    val = NightCityPlus(tmp_path)
    assert [r.image for r in val.records] == [tree.labelled[0][0]]
    # labelIds road, building, car -> trainIds 0, 2, 13 (NightCity's own val map has other classes)
    assert sorted(val[0]["label"].unique().tolist()) == [0, 2, 13] and NIGHTCITY_PLUS_VALUES == (7, 11, 26)
    result = run_cli("data", "check", "nightcity+", tmp_path, "--split", "val")
    assert result.code == 0 and "label values (stored): 7, 11, 26" in result.out


# ------------------------------------------------------------------------------------------- data check selection
def test_data_check_bdd100k_night_subset_by_timeofday(tmp_path, realdata, run_cli):
    tree = make_bdd100k(tmp_path, realdata)
    ids = bdd_night_ids(realdata)
    night_img, night_lab = next((img, lab) for img, lab in tree.labelled if img.stem == ids["train"][0])
    day_index = next(i for i, (img, _lab) in enumerate(tree.labelled) if img.stem == BDD_DAY_ID)
    bad_night = plant(tree, "unknown_value", tree.labelled.index((night_img, night_lab)))
    bad_day = plant(tree, "corrupt_image", day_index)

    night = run_cli("data", "check", "bdd100k", tmp_path, "--timeofday", "night")
    assert night.code == 1, night.out + night.err
    assert night.out.splitlines()[0] == f"BDD100K at {tmp_path} (timeofday=night)"
    assert "train: 2 samples (1 readable)" in night.out and "selected 2 of 3 train images" in night.out
    assert "val: 1 sample (1 readable)" in night.out
    assert _defect_lines(night.out) == [
        f"{bad_night}: unknown label values [200]; expected trainIds 0-18 and 255 (ignore)"]
    assert str(bad_day) not in night.out  # the daytime image is not selected, so not read

    everything = run_cli("data", "check", "bdd100k", tmp_path)
    assert everything.code == 1 and "train: 3 samples (1 readable)" in everything.out
    assert [line.split(":")[0] for line in _defect_lines(everything.out)] == sorted([str(bad_night), str(bad_day)])

    names = tmp_path / "night.txt"
    names.write_text(f"{ids['train'][1]}.jpg\n")  # the clean night image only
    listed = run_cli("data", "check", "bdd100k", tmp_path, "--night-list", names, "--split", "train")
    assert listed.code == 0, listed.out
    assert "train: 1 sample (1 readable)" in listed.out and "result: clean (1 sample)" in listed.out

    day = run_cli("data", "check", "bdd100k", tmp_path, "--timeofday", "daytime", "--split", "train",
                  "--attributes-json", tmp_path / "bdd100k/labels/bdd100k_labels_images_train.json")
    day_defects = _defect_lines(day.out)
    assert day.code == 1 and len(day_defects) == 1 and day_defects[0].startswith(f"{bad_day}: cannot decode image")
    assert str(bad_night) not in day.out


def test_data_check_bdd100k_timeofday_skips_the_unattributed_test_split(tmp_path, realdata, run_cli):
    make_bdd100k(tmp_path, realdata)
    image(tmp_path / "bdd100k/images/10k/test/0a0a0b1a-7c39d841.jpg", 72, 128)
    result = run_cli("data", "check", "bdd100k", tmp_path, "--timeofday", "night")
    assert result.code == 0, result.out + result.err
    json_path = tmp_path / "bdd100k/labels/bdd100k_labels_images_test.json"
    assert f"not checked: test ({json_path}: BDD100K labels JSON not found" in result.out
    assert "result: clean (3 samples)" in result.out
    # asked for explicitly, the split that cannot be selected is an error
    only_test = run_cli("data", "check", "bdd100k", tmp_path, "--timeofday", "night", "--split", "test")
    assert only_test.code == 2 and only_test.err.startswith(f"error: {json_path}: BDD100K labels JSON not found")


def test_data_check_acdc_and_dark_zurich_selection(tmp_path, realdata, run_cli):
    tree = make_acdc(tmp_path / "acdc")
    fog = next(i for i, (img, _lab) in enumerate(tree.labelled) if "/fog/" in img.as_posix())
    bad_ref = plant(tree, "corrupt_reference", 0)  # the night sample's reference
    bad_fog = plant(tree, "unknown_value", fog)
    every = run_cli("data", "check", "acdc", tmp_path / "acdc")
    assert every.code == 1 and len(_defect_lines(every.out)) == 2
    night = run_cli("data", "check", "acdc", tmp_path / "acdc", "--condition", "night")
    assert night.code == 1 and "night: 1 samples with references" in night.out
    assert [line.split(":")[0] for line in _defect_lines(night.out)] == [str(bad_ref)]
    no_refs = run_cli("data", "check", "acdc", tmp_path / "acdc", "--condition", "night,rain", "--no-references")
    assert no_refs.code == 0, no_refs.out
    assert "night: 1 samples" in no_refs.out and "rain: 1 samples" in no_refs.out and "fog:" not in no_refs.out
    assert "train: 2 samples (2 readable)" in no_refs.out and str(bad_fog) not in no_refs.out

    make_dark_zurich(tmp_path / "dz", realdata, twilight=True)
    twilight = run_cli("data", "check", "dark_zurich", tmp_path / "dz", "--condition", "twilight")
    assert twilight.code == 0
    assert [line.split(":")[0] for line in twilight.out.splitlines()[1:] if not line.startswith(" ")] == [
        "train/twilight", "result"]
    bad = run_cli("data", "check", "dark_zurich", tmp_path / "dz", "--condition", "fog")
    assert bad.code == 2 and bad.err.count("\n") == 1
    assert "Dark Zurich condition 'fog' (--condition): expected one of day, night, twilight or 'all'" in bad.err

    csv_path = tmp_path / "dz" / "zurich_dn_pair_train.csv"
    moved = csv_path.rename(tmp_path / "my_pairs.csv")
    assert run_cli("data", "check", "dark_zurich_pairs", tmp_path / "dz").code == 2
    pairs = run_cli("data", "check", "dark_zurich_pairs", tmp_path / "dz", "--pairs", moved)
    assert pairs.code == 0 and f"pairs from {moved}" in pairs.out and "train: 3 samples (3 readable)" in pairs.out


def test_data_check_label_options_nightcity_cityscapes_folder(tmp_path, realdata, run_cli):
    make_nightcity(tmp_path / "nc")
    relabelled = tmp_path / "plus_labels"
    label(relabelled / "LosAngeles_0007_labelIds.png", (26, 200), 32, 64)
    plus = run_cli("data", "check", "nightcity+", tmp_path / "nc", "--split", "val", "--label-dir", relabelled)
    assert plus.code == 1 and _defect_lines(plus.out) == [
        f"{relabelled / 'LosAngeles_0007_labelIds.png'}: unknown label values [200]; expected Cityscapes labelIds 0-33"]
    make_cityscapes(tmp_path / "cs", realdata)
    train_ids = run_cli("data", "check", "cityscapes", tmp_path / "cs", "--split", "val", "--label-type", "labelTrainIds")
    assert train_ids.code == 1 and "no label (expected" in train_ids.out and "_gtFine_labelTrainIds.png)" in train_ids.out
    make_folder(tmp_path / "f")
    unlabelled = run_cli("data", "check", "folder", tmp_path / "f", "--unlabelled")
    assert unlabelled.code == 0 and "train: 3 samples (3 readable), 0 unmatched files, unlabelled" in unlabelled.out


@pytest.mark.parametrize(("name", "option", "applies_to"), [
    ("cityscapes", ("--timeofday", "night"), "bdd100k"),
    ("nighttime_driving", ("--condition", "night"), "dark_zurich, acdc"),
    ("bdd100k", ("--pairs", "pairs.csv"), "dark_zurich_pairs"),
    ("acdc", ("--label-dir", "labels"), "nightcity, nightcity+"),
    ("dark_zurich", ("--no-references",), "acdc"),
])
def test_data_check_refuses_an_option_the_dataset_does_not_take(tmp_path, run_cli, name, option, applies_to):
    result = run_cli("data", "check", name, tmp_path, *option)
    assert result.code == 2 and result.out == ""
    flag = "--references/--no-references" if option[0] == "--no-references" else option[0]
    assert result.err.startswith(f"error: {flag} does not apply to {name}: it applies to {applies_to} only (")
    assert result.err.count("\n") == 1  # one line


def test_every_loader_selection_keyword_has_a_check_option():
    for name, cls in DATASETS.items():
        for key in selection_options(cls):
            assert key in SELECTION_FLAGS, f"{name}: {key}"
    assert selection_options(BDD100K) == ("night_list", "timeofday", "attributes_json")
    assert selection_options(ACDC) == ("conditions", "with_reference")
    assert selection_options(DarkZurichPairs) == ("pairs_csv",)  # pair_geometry serves samples, selects nothing
    with pytest.raises(UserError, match="--timeofday does not apply to cityscapes"):
        check_dataset("cityscapes", ".", timeofday="night")


def test_data_check_pairs_missing_day_image_and_orphan_label(tmp_path, realdata, run_cli):
    make_dark_zurich(tmp_path, realdata)
    _night, day = dark_zurich_rows(realdata)[-1]
    (tmp_path / "rgb_anon" / f"{day}_rgb_anon.png").unlink()
    result = run_cli("data", "check", "dark_zurich_pairs", tmp_path)
    assert result.code == 1
    assert f"{tmp_path / 'rgb_anon' / day}_rgb_anon.png: listed in zurich_dn_pair_train.csv but not found" in result.out
    tree = make_nighttime_driving(tmp_path / "nd", realdata)
    tree.labelled[0][0].unlink()
    result = run_cli("data", "check", "nighttime_driving", tmp_path / "nd")
    assert result.code == 1 and f"{tree.labelled[0][1]}: no matching image" in result.out


def test_data_check_summary_counts_and_wrong_layout(tmp_path, realdata, run_cli):
    make_dark_zurich(tmp_path, realdata)
    result = run_cli("data", "check", "dark_zurich", tmp_path)
    assert result.code == 0
    assert "train/night: 3 samples (3 readable), 0 unmatched files, unlabelled" in result.out
    assert "val: 3 samples (3 readable)" in result.out and "image sizes: 64x36 (3)" in result.out
    assert "label values (stored): 0, 1, 2, 8, 13, 255" in result.out and "invalid pixels: 25.0%" in result.out
    assert "not present (skipped): train/twilight" in result.out
    result = run_cli("data", "check", "cityscapes", tmp_path)
    assert result.code == 2 and f"{tmp_path / 'leftImg8bit' / 'train'} not found" in result.err
    assert "expected the Cityscapes layout" in result.err


# ------------------------------------------------------------------------------------------- transforms
def _sample(h=40, w=60):
    img = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    lab = tv_tensors.Mask(torch.randint(0, 19, (h, w), dtype=torch.uint8))
    return {"image": img, "label": lab, "invalid": tv_tensors.Mask(torch.zeros(h, w, dtype=torch.uint8)), "name": "n"}


def test_scale_crop_is_deterministic_nearest_and_pads_with_ignore():
    torch.manual_seed(0)
    sample = _sample()
    t = train_transform(crop_size=(32, 48), scale_range=(0.5, 1.0))
    torch.manual_seed(7)
    a = t(sample)
    torch.manual_seed(7)
    b = t(sample)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"]) and a["name"] == "n"
    assert a["image"].shape == (3, 32, 48) and a["label"].shape == (32, 48)
    assert set(a["label"].unique().tolist()) <= set(range(19)) | {255}  # nearest: no blended ids
    small = RandomScaleCrop((100, 100), (0.5, 0.5))(sample)  # scaled to 20x30, padded to 100x100
    assert small["image"].shape == (3, 100, 100)
    assert (small["label"][20:] == 255).all() and (small["label"][:, 30:] == 255).all()
    assert (small["label"][:20, :30] < 19).all() and (small["image"][:, 20:] == 0).all()
    assert (small["invalid"][20:] == 255).all() and (small["invalid"][:20, :30] == 0).all()
    resized = train_transform(crop_size=30, scale_range=(1.0, 1.0), out_size=(12, 10))(sample)
    assert resized["image"].shape == (3, 12, 10) and resized["label"].shape == (12, 10)
    assert set(resized["label"].unique().tolist()) <= set(range(19))


def _crop_of(transform) -> RandomScaleCrop:
    crop = transform.transforms[0]
    assert isinstance(crop, RandomScaleCrop)
    return crop


def test_paper_recipe_crops_have_the_seeds_settings():
    # ULCA Sec. 4.1 (after DANNet): Cityscapes crop 512 at scale 0.5-1.0, Dark Zurich crop 960 at 0.9-1.1, flip;
    # the recipe's streams are the one place these settings live (built by build_transform -> train_transform)
    from nightseg.core.config import load_config
    from nightseg.data.streams import build_transform
    from nightseg.pipelines.recipes import CONFIG_DIR

    cfg = load_config(CONFIG_DIR / "ulca.yaml")
    cs, dz = build_transform(cfg.data.source, train=True), build_transform(cfg.data.target, train=True)
    assert (_crop_of(cs).crop_size, _crop_of(cs).scale_range) == ((512, 512), (0.5, 1.0))
    assert (_crop_of(dz).crop_size, _crop_of(dz).scale_range) == ((960, 960), (0.9, 1.1))
    assert [type(t).__name__ for t in cs.transforms] == ["RandomScaleCrop", "RandomHorizontalFlip"]
    assert build_transform(cfg.data.val, train=False) is None
    # the drawn scale stays in the recipe's range: a 1024x2048 frame is scaled to 512-1024 rows
    frame = [tv_tensors.Image(torch.zeros(3, 1024, 2048, dtype=torch.uint8))]
    torch.manual_seed(0)
    rows = [_crop_of(cs).make_params(frame)["size"][0] for _ in range(200)]
    assert 512 <= min(rows) < 560 and 980 < max(rows) <= 1024
    frame = [tv_tensors.Image(torch.zeros(3, 1080, 1920, dtype=torch.uint8))]
    rows = [_crop_of(dz).make_params(frame)["size"][0] for _ in range(200)]
    assert round(1080 * 0.9) <= min(rows) < 990 and 1150 < max(rows) <= round(1080 * 1.1)
    sample = {"image": tv_tensors.Image(torch.zeros(3, 1080, 1920, dtype=torch.uint8)),
              "label": tv_tensors.Mask(torch.zeros(1080, 1920, dtype=torch.uint8))}
    out = dz(sample)
    assert out["image"].shape == (3, 960, 960) and out["label"].shape == (960, 960)
    # every setting of train_transform can be chosen
    custom = train_transform(crop_size=(480, 640), scale_range=(0.9, 1.1), out_size=512, hflip=False)
    assert (_crop_of(custom).crop_size, _crop_of(custom).scale_range) == ((480, 640), (0.9, 1.1))
    assert [type(t) for t in custom.transforms] == [RandomScaleCrop, Resize] and custom.transforms[1].size == [512, 512]
    assert train_transform(crop_size=(480, 640), scale_range=(0.9, 1.1))(sample)["image"].shape == (3, 480, 640)


def test_flip_applies_jointly():
    sample = _sample(8, 8)
    sample["label"] = tv_tensors.Mask(torch.arange(8, dtype=torch.uint8).repeat(8, 1))
    sample["image"] = tv_tensors.Image(sample["label"].expand(3, 8, 8).clone())
    t = train_transform(crop_size=8, scale_range=(1.0, 1.0))
    flipped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out = t(sample)
        assert torch.equal(out["image"][0], out["label"])
        flipped += int(out["label"][0, 0]) == 7
    assert 0 < flipped < 8


def test_imagenet_normalisation_round_trip():
    x = torch.rand(2, 3, 4, 5)
    y = normalize_imagenet(x)
    assert torch.allclose(y[:, 0], (x[:, 0] - 0.485) / 0.229)
    assert torch.allclose(denormalize_imagenet(y), x, atol=1e-6)


# ------------------------------------------------------------------------------------------- photometric
def test_strong_and_weak_augment_deterministic_per_sample_and_in_range():
    x = torch.rand(4, 3, 24, 32)
    a = strong_augment(x, torch.Generator().manual_seed(1))
    b = strong_augment(x, torch.Generator().manual_seed(1))
    c = strong_augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    same = strong_augment(x[:1].expand(4, -1, -1, -1).contiguous(), torch.Generator().manual_seed(3))
    assert not torch.equal(same[0], same[1])  # per-sample parameters
    w = weak_augment(x, torch.Generator().manual_seed(1), WeakConfig(noise_std=(0.05, 0.05)))
    assert 0.03 < float((w - x).std()) < 0.06
    identity = StrongConfig(p=0.0, blur_p=0.0)
    assert torch.allclose(strong_augment(x, torch.Generator().manual_seed(0), identity), x, atol=1e-6)


def test_gaussian_blur_per_sample_sigma():
    x = torch.rand(2, 3, 20, 20)
    y = gaussian_blur(x, torch.tensor([0.0, 2.0]))
    assert torch.allclose(y[0], x[0], atol=1e-6)
    assert float(y[1].std()) < 0.5 * float(x[1].std())
    assert torch.allclose(y[1].mean(), x[1].mean(), atol=0.02)


def test_dataloader_with_workers_is_deterministic(tmp_path, realdata):
    from torch.utils.data import DataLoader

    make_cityscapes(tmp_path, realdata)
    ds = Cityscapes(tmp_path, "train", transform=train_transform(crop_size=16, scale_range=(0.5, 1.5)))

    def run():
        loader = DataLoader(ds, batch_size=3, num_workers=2, generator=torch.Generator().manual_seed(0))
        return next(iter(loader))["image"]

    assert torch.equal(run(), run())


# ------------------------------------------------------------------------------------------- round trip
def test_synthetic_output_loads_through_the_loaders(tmp_path, run_cli):
    """The generator (issue 3) writes the Cityscapes, Dark Zurich and NightCity layouts: they load unchanged."""
    synthetic = pytest.importorskip("nightseg.synthetic.generator")
    out = tmp_path / "synth"
    counts = {"train": 2, "val": 1, "pairs": 2, "night_val": 2, "night_train": 1, "nightcity_val": 1}
    synthetic.generate(out, preset="tiny", counts=counts, seed=0, progress=False)

    cs_root = out / "cityscapes"
    for split, n in (("train", 2), ("val", 1)):
        ds = Cityscapes(cs_root, split)
        assert len(ds) == n
        sample = ds[0]
        _check_contract(sample)
        # the generator also writes trainIds: our on-the-fly labelIds mapping must agree with them
        trainids = ds.records[0].label.parent / f"{sample['name']}_gtFine_labelTrainIds.png"
        assert np.array_equal(np.asarray(Image.open(trainids)), sample["label"].numpy())

    dz_root = out / "dark_zurich"
    pairs = DarkZurichPairs(dz_root, transform=train_transform(crop_size=32, scale_range=(0.9, 1.1)))
    assert len(pairs) == 2
    pair = pairs[1]
    assert pair["night"].shape == pair["day"].shape == (3, 32, 32) and pair["name"] != pair["day_name"]
    val = DarkZurich(dz_root, "val")
    assert len(val) == 2
    sample = val[0]
    _check_contract(sample)
    assert sample["invalid"].dtype == torch.bool

    nc_root = out / "NightCity"
    for split in ("train", "val"):
        _check_contract(NightCity(nc_root, split)[0])

    for name, root in (("cityscapes", cs_root), ("dark_zurich", dz_root), ("dark_zurich_pairs", dz_root),
                       ("nightcity", nc_root)):
        checked = run_cli("data", "check", name, root)
        assert checked.code == 0, f"{name}: " + checked.out + checked.err
