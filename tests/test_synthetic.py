"""`nightseg synth`: real-dataset layouts and names, label validity, pairing, determinism, resume, realism."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nightseg.core.classes import LABEL_ID_TO_TRAIN_ID, NUM_CLASSES, VALID_LABEL_IDS
from nightseg.core.errors import UserError
from nightseg.synthetic.generator import PRESETS, generate, make_sample, pair_csv_row, resolve_config

SIZE = "48x96"
COUNTS = ("--num-train", "3", "--num-val", "2", "--num-pairs", "3", "--num-night-val", "2", "--num-night-train", "2",
          "--num-nightcity-val", "1")

# file names of the real datasets (the same shapes as the real lists in ../shared/realdata/dataset_lists)
CS_IMAGE = re.compile(r"^cityscapes/leftImg8bit/(train|val)/([a-z]+)/(\2_\d{6}_\d{6})_leftImg8bit\.png$")
CS_LABEL = re.compile(r"^cityscapes/gtFine/(train|val)/([a-z]+)/(\2_\d{6}_\d{6})_gtFine_(labelIds|labelTrainIds)\.png$")
DZ_IMAGE = re.compile(r"^dark_zurich/rgb_anon/(train/(?:day|night)|val/night)/(GOPR\d{4})/(\2_frame_\d{6})_rgb_anon\.png$")
DZ_GT = re.compile(r"^dark_zurich/gt/val/night/(GOPR\d{4})/(\1_frame_\d{6})_gt_(labelTrainIds|labelIds|invIds)\.png$")
NC_IMAGE = re.compile(r"^NightCity/images/(train|val)/([a-z]+_\d{5})\.png$")
NC_LABEL = re.compile(r"^NightCity/label/(train|val)/([a-z]+_\d{5})_labelIds\.png$")
PAIR_ROW = re.compile(r"^train/night/(GOPR\d{4})/\1_frame_\d{6},train/day/(GOPR\d{4})/\2_frame_\d{6}$")


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    from nightseg.cli import main

    assert main(["synth", "--out", str(out), "--preset", "tiny", "--size", SIZE, "--seed", "3", "--quiet", *COUNTS]) == 0
    return out


def test_real_lists_match_our_name_patterns(realdata):
    """The regexes used below accept the real datasets' own file names."""
    lists = realdata / "dataset_lists"
    row = (lists / "zurich_dn_pair_train.csv").read_text().splitlines()[0]
    assert PAIR_ROW.match(row)
    first = (lists / "cityscapes_train.txt").read_text().splitlines()[0]
    assert CS_IMAGE.match(f"cityscapes/leftImg8bit/train/{first}")
    val = (lists / "label_zurich.txt").read_text().splitlines()[0]
    assert DZ_GT.match(f"dark_zurich/{val}")
    img = (lists / "zurich_val.txt").read_text().splitlines()[0]
    assert DZ_IMAGE.match(f"dark_zurich/rgb_anon/val/{img}")


def test_layout_and_file_names(synth_dir):
    files = sorted(str(p.relative_to(synth_dir)) for p in synth_dir.rglob("*") if p.is_file())
    groups: dict[str, list[re.Match]] = {"cs_img": [], "cs_lab": [], "dz_img": [], "dz_gt": [], "nc_img": [],
                                         "nc_lab": []}
    other = []
    for f in files:
        for key, rx in (("cs_img", CS_IMAGE), ("cs_lab", CS_LABEL), ("dz_img", DZ_IMAGE), ("dz_gt", DZ_GT),
                        ("nc_img", NC_IMAGE), ("nc_lab", NC_LABEL)):
            m = rx.match(f)
            if m:
                groups[key].append(m)
                break
        else:
            other.append(f)
    assert other == ["dark_zurich/zurich_dn_pair_train.csv", "manifest.json"]
    assert len(groups["cs_img"]) == 5 and len(groups["cs_lab"]) == 10
    assert sum(m.group(1) == "train" for m in groups["cs_img"]) == 3
    assert len(groups["dz_img"]) == 3 + 3 + 2 and len(groups["dz_gt"]) == 3 * 2
    assert len(groups["nc_img"]) == 3 and len(groups["nc_lab"]) == 3
    # every image has its labels (same stem), in the same city / sequence folder
    for m in groups["cs_img"]:
        split, city, stem = m.groups()
        for kind in ("labelIds", "labelTrainIds"):
            assert (synth_dir / f"cityscapes/gtFine/{split}/{city}/{stem}_gtFine_{kind}.png").is_file()
    for m in groups["dz_img"]:
        if m.group(1) == "val/night":
            seq, stem = m.group(2), m.group(3)
            for kind in ("labelTrainIds", "labelIds", "invIds"):
                assert (synth_dir / f"dark_zurich/gt/val/night/{seq}/{stem}_gt_{kind}.png").is_file()
    for m in groups["nc_img"]:
        assert (synth_dir / f"NightCity/label/{m.group(1)}/{m.group(2)}_labelIds.png").is_file()
    # train and val cities differ, as in Cityscapes
    cities = {m.group(1): set() for m in groups["cs_img"]}
    for m in groups["cs_img"]:
        cities[m.group(1)].add(m.group(2))
    assert not cities["train"] & cities["val"]


def test_labels_are_valid_and_consistent(synth_dir):
    n_checked = 0
    for lab in synth_dir.rglob("*_gtFine_labelIds.png"):
        ids = _png(lab)
        train = _png(Path(str(lab).replace("_labelIds.png", "_labelTrainIds.png")))
        img = _png(Path(str(lab).replace("gtFine", "leftImg8bit", 1).replace("_gtFine_labelIds", "_leftImg8bit")))
        assert ids.dtype == np.uint8 and ids.shape == (48, 96) and img.shape == (48, 96, 3)
        assert set(np.unique(ids).tolist()) <= VALID_LABEL_IDS
        assert set(np.unique(train).tolist()) <= set(range(NUM_CLASSES)) | {255}
        assert np.array_equal(LABEL_ID_TO_TRAIN_ID[ids], train)
        assert (ids == 1).any(), "Cityscapes frames show the ego vehicle (labelId 1)"
        n_checked += 1
    for lab in synth_dir.rglob("*_gt_labelTrainIds.png"):
        train = _png(lab)
        ids = _png(Path(str(lab).replace("_labelTrainIds", "_labelIds")))
        inv = _png(Path(str(lab).replace("_labelTrainIds", "_invIds")))
        assert np.array_equal(LABEL_ID_TO_TRAIN_ID[ids], train)
        assert set(np.unique(inv).tolist()) <= {0, 1}
        assert not (ids == 1).any(), "no ego vehicle in Dark Zurich frames"
        n_checked += 1
    for lab in synth_dir.rglob("NightCity/label/*/*_labelIds.png"):
        assert set(np.unique(_png(lab)).tolist()) <= VALID_LABEL_IDS
        n_checked += 1
    assert n_checked == 5 + 2 + 3


def test_pair_csv_rows_point_to_existing_frames(synth_dir, realdata):
    rows = (synth_dir / "dark_zurich/zurich_dn_pair_train.csv").read_text().splitlines()
    assert len(rows) == 3
    real_row = (realdata / "dataset_lists/zurich_dn_pair_train.csv").read_text().splitlines()[0]
    assert real_row.count(",") == 1 and not real_row.endswith(".png")
    for row in rows:
        assert PAIR_ROW.match(row), row
        night, day = row.split(",")
        assert night.split("/")[-2] != day.split("/")[-2], "day and night are different sequences"
        for rel in (night, day):
            assert (synth_dir / "dark_zurich/rgb_anon" / f"{rel}_rgb_anon.png").is_file()
    assert rows[0] == pair_csv_row(0)


def test_real_loaders_read_the_output(synth_dir):
    from nightseg.data import build_dataset

    cs = build_dataset("cityscapes", synth_dir / "cityscapes", "train")
    assert len(cs) == 3 and cs[0]["label"].max() < 256
    dz = build_dataset("dark_zurich", synth_dir / "dark_zurich", "val")
    assert len(dz) == 2 and str(dz[0]["invalid"].dtype) == "torch.bool"
    pairs = build_dataset("dark_zurich_pairs", synth_dir / "dark_zurich", "train")
    assert len(pairs) == 3 and set(pairs[0]) >= {"night", "day"}
    nc = build_dataset("nightcity", synth_dir / "NightCity", "train")
    assert len(nc) == 2


def test_same_seed_same_bytes_any_worker_count(synth_dir, tmp_path):
    again = tmp_path / "again"
    generate(again, preset="tiny", size=(48, 96), seed=3, workers=2, progress=False,
             counts=dict(train=3, val=2, pairs=3, night_val=2, night_train=2, nightcity_val=1))
    assert _digest(again) == _digest(synth_dir)
    other = tmp_path / "other"
    generate(other, preset="tiny", size=(48, 96), seed=4, progress=False,
             counts=dict(train=3, val=2, pairs=3, night_val=2, night_train=2, nightcity_val=1))
    a, b = _digest(other), _digest(synth_dir)
    assert a.keys() == b.keys()
    images = [k for k in a if k.endswith((".png",)) and "gt" not in k and "label" not in k]
    assert all(a[k] != b[k] for k in images)


def test_resume_renders_only_missing_files_and_refuses_other_settings(tmp_path, run_cli):
    out = tmp_path / "set"
    args = ["synth", "--out", out, "--preset", "tiny", "--size", "32x64", "--quiet", "--num-train", "2", "--num-val",
            "0", "--num-pairs", "2", "--num-night-val", "0", "--num-night-train", "0", "--num-nightcity-val", "0"]
    assert run_cli(*args).code == 0
    before = _digest(out)
    victim = next(out.rglob("*_rgb_anon.png"))
    victim.unlink()
    keep = next(out.rglob("*_leftImg8bit.png"))
    mtime = keep.stat().st_mtime_ns
    assert run_cli(*args).code == 0
    assert _digest(out) == before
    assert keep.stat().st_mtime_ns == mtime, "existing files are not rewritten"
    res = run_cli(*[a if a != "32x64" else "32x96" for a in args])
    assert res.code == 2 and str(out) in res.err and "--overwrite" in res.err
    assert run_cli(*[a if a != "32x64" else "32x96" for a in args], "--overwrite").code == 0
    assert _png(next(out.rglob("*_leftImg8bit.png"))).shape == (32, 96, 3)


def test_refuses_folders_it_did_not_write(tmp_path, run_cli):
    (tmp_path / "cityscapes" / "leftImg8bit").mkdir(parents=True)
    res = run_cli("synth", "--out", tmp_path, "--preset", "tiny", "--overwrite", "--quiet")
    assert res.code == 2 and str(tmp_path) in res.err and "not generated by nightseg synth" in res.err
    assert (tmp_path / "cityscapes" / "leftImg8bit").is_dir()


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--size", "big"], "--size big"), (["--size", "31x64"], "--size 31x64"), (["--preset", "huge"], "--preset huge"),
     (["--num-pairs", "-1"], "--num-pairs -1"), (["--workers", "0"], "--workers 0")],
)
def test_bad_arguments_exit_2_naming_the_value(tmp_path, run_cli, args, needle):
    res = run_cli("synth", "--out", tmp_path / "x", "--quiet", *args)
    assert res.code == 2 and needle in res.err


def test_presets_and_overrides():
    assert resolve_config("tiny")[0] == PRESETS["tiny"]["size"]
    size, counts = resolve_config("full", (256, 512), {"pairs": 7, "train": None})
    assert size == (256, 512) and counts["pairs"] == 7 and counts["train"] == PRESETS["full"]["counts"]["train"]
    assert PRESETS["full"]["size"] == (512, 1024) and PRESETS["full"]["counts"]["train"] >= 1000
    with pytest.raises(UserError, match="unknown split"):
        resolve_config("tiny", None, {"bogus": 1})


# --- properties of the scenes (in memory) -----------------------------------------------------------------


def _v(img: np.ndarray) -> np.ndarray:
    return img.max(axis=2) / 255.0


def test_pairs_share_static_layout_and_differ_in_traffic():
    import cv2

    agree, dyn_diff = [], []
    for i in range(6):
        s = make_sample("pairs", i, seed=11, size=(96, 192))
        d, n = s.day, s.night
        assert s.offset is not None and d.camera != n.camera
        k = d.camera.f / n.camera.f
        m = np.array([[k, 0, d.camera.cx - k * n.camera.cx], [0, k, d.camera.cy - k * n.camera.cy]])
        warped = cv2.warpAffine(d.train_ids, m, (192, 96), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                borderValue=255)
        static = (warped <= 10) & (n.train_ids <= 10)
        agree.append((warped[static] == n.train_ids[static]).mean())
        dyn_d = (warped >= 11) & (warped <= 18)
        dyn_n = (n.train_ids >= 11) & (n.train_ids <= 18)
        dyn_diff.append((dyn_d ^ dyn_n).sum() / max((dyn_d | dyn_n).sum(), 1))
    assert np.mean(agree) >= 0.8
    assert np.mean(dyn_diff) > 0.3, "dynamic objects must differ between the frames of a pair"


def test_night_is_underexposed_noisy_and_lit_by_sources_not_sky():
    dark_share, mean_day, mean_night, sky_over = [], [], [], []
    for i in range(6):
        s = make_sample("pairs", i, seed=5, size=(96, 192))
        vd, vn = _v(s.day.image), _v(s.night.image)
        mean_day.append(vd.mean())
        mean_night.append(vn.mean())
        dark_share.append(((vn < 0.1).mean(), (vd < 0.1).mean()))
        over = vn >= 0.9
        sky_over.append((s.night.train_ids[over] == 10).mean() if over.any() else 0.0)
    dn, dd = np.mean(dark_share, axis=0)
    assert dn > 1.5 * dd, "night has many more under-exposed pixels (about 3x over 20 pairs: docs/synthetic.md)"
    assert 0.15 < np.mean(mean_night) < np.mean(mean_day), "night darker than day but not black"
    assert np.mean(sky_over) < 0.05, "night over-exposure comes from light sources, not the sky"


def test_invalid_mask_marks_only_dark_pixels():
    s = make_sample("night_val", 0, seed=2, size=(96, 192))
    inv = s.frame.invalid
    assert inv.dtype == bool and 0.0 < inv.mean() < 0.5
    v = _v(s.frame.image)
    assert v[inv].mean() < v[~inv].mean() / 2


def test_all_classes_present_and_frequencies_close_to_cityscapes():
    cs = np.array([0.3687, 0.0608, 0.2282, 0.0066, 0.0088, 0.0123, 0.0021, 0.0055, 0.1593, 0.0116, 0.0402, 0.0122,
                   0.0014, 0.0699, 0.0027, 0.0024, 0.0023, 0.0010, 0.0041])
    counts = np.zeros(256)
    for i in range(60):
        counts += np.bincount(make_sample("train", i, seed=0, size=(32, 64)).frame.train_ids.ravel(), minlength=256)
    q = counts[:NUM_CLASSES] / counts[:NUM_CLASSES].sum()
    p = cs / cs.sum()
    assert (q > 0).all(), f"classes never drawn: {np.flatnonzero(q == 0).tolist()}"
    # issue 3's target, on the small set itself: measured 0.056 nats here (seeds 1-3: 0.046-0.058; 0.033 at
    # 64x128, 0.023 over 300 scenes at 128x256 in docs/synthetic.md), so sampling noise at this size is far
    # below the margin to 0.15
    assert float(np.sum(p * np.log(p / q))) <= 0.15


def test_make_sample_is_deterministic():
    a = make_sample("night_train", 4, seed=9, size=(32, 64)).frame
    b = make_sample("night_train", 4, seed=9, size=(32, 64)).frame
    c = make_sample("night_train", 5, seed=9, size=(32, 64)).frame
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label_ids, b.label_ids)
    assert not np.array_equal(a.image, c.image)


def _bench(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_object_class_is_identifiable_by_colour_alone():
    """Issue 3: "no class may be identifiable by colour alone". The Bayes colour classifier (RGB -> most
    frequent class, no spatial input) of bench/synthetic_colour_baseline.py, fitted on day train scenes and
    scored on day val scenes, stays under 50 IoU on every class except road, vegetation and sky (measured:
    building 33, car 21, everything else lower; vegetation 77, sky 56, road 51). Vegetation is colour-separable
    here (docs/synthetic.md, "Colour alone")."""
    cb = _bench("synthetic_colour_baseline")
    lookup = cb.ColourLookup()
    for i in range(40):
        f = make_sample("train", i, seed=0, size=(64, 128)).frame
        lookup.add(f.image.reshape(-1, 3), f.train_ids.ravel())
    conf = 0
    for i in range(15):
        f = make_sample("val", i, seed=0, size=(64, 128)).frame
        conf = conf + cb.confusion(f.train_ids.ravel(), lookup.predict(f.image.reshape(-1, 3)))
    ious, miou = cb.iou(conf)
    from nightseg.core.classes import CLASS_NAMES

    by_colour = {CLASS_NAMES[k]: round(v) for k, v in enumerate(ious) if v == v and v >= 50}
    assert set(by_colour) <= {"road", "vegetation", "sky"}, by_colour
    assert miou < 26.4, "colour alone must stay below the spatial pspnet_tiny day model (26.4 mIoU)"


def test_position_profiles_rows_and_columns():
    """bench/synthetic_stats.py compares where each class sits vertically (rows) and horizontally (columns)."""
    ss = _bench("synthetic_stats")
    left, right = np.full((20, 40), 255, np.uint8), np.full((20, 40), 255, np.uint8)
    left[:10, :4] = 13  # car in the top-left corner
    right[:10, -4:] = 13  # car in the top-right corner
    a, b = ss.LabelStats(), ss.LabelStats()
    a.add(left)
    b.add(right)
    present = (a.pixels > 0) & (b.pixels > 0)
    assert ss.profile_tv(a.profile(), b.profile(), present)[13] == 0.0  # same rows
    assert ss.profile_tv(a.col_profile(), b.col_profile(), present)[13] == 1.0  # disjoint columns
    assert a.mean_col()[13] == pytest.approx(0.05) and b.mean_col()[13] == pytest.approx(0.95)
    assert np.isnan(ss.profile_tv(a.profile(), b.profile(), present)[0])
