"""Recipes: YAML + base inheritance + dotted overrides, validated with one-line errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nightseg.core.config import (
    Config,
    config_diff,
    config_from_dict,
    dump_config,
    list_methods,
    load_config,
    parse_override,
)
from nightseg.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"method": {"name": "supervised"}, "data": {"source": {"dataset": "cityscapes"}}}


def write(folder: Path, name: str, data: dict | str) -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("supervised_*.yaml")))
def test_shipped_supervised_recipes_load(path):
    cfg = load_config(REPO / path)
    assert cfg.method.name == "supervised" and cfg.recipe.endswith(Path(path).stem)
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 5e-4
    assert cfg.optim.poly_power == 0.9 and cfg.data.batch_size == 2
    assert cfg.data.val.dataset == "dark_zurich" and cfg.data.val.split == "val"
    if "/cpu/" in path:
        assert cfg.model.name == "pspnet_tiny" and cfg.data.source.crop == [128, 128]  # = configs/cpu/ulca.yaml
    else:
        assert cfg.model.name == "pspnet_r101" and cfg.data.source.crop == [512, 512]
        assert cfg.optim.lr == 2.5e-4
    if "joint" in path:
        assert cfg.data.source.dataset == "cityscapes" and cfg.data.target.dataset == "nightcity"
    elif "nightcity" in path:
        assert cfg.data.source.dataset == "nightcity" and cfg.data.target.dataset is None


def test_defaults_and_types():
    cfg = config_from_dict(MINIMAL)
    assert isinstance(cfg, Config) and cfg.seed == 0 and cfg.train.precision == "auto"
    assert cfg.data.source.flip is True and cfg.data.val.split == "val" and cfg.data.target.dataset is None
    assert cfg.method.class_weights is None and "supervised" in list_methods()


def test_overrides_parse_yaml_values(tmp_path):
    path = write(tmp_path, "r.yaml", MINIMAL)
    cfg = load_config(path, ["train.max_steps=200", "optim.lr=1e-3", "data.source.crop=[64, 128]",
                             "train.progress=false", "data.val.dataset=null", "train.devices=2",
                             "method.class_weights=inverse", "optim.weight_decay=0", "seed=7"])
    assert cfg.train.max_steps == 200 and cfg.optim.lr == 1e-3 and cfg.data.source.crop == [64, 128]
    assert cfg.train.progress is False and cfg.data.val.dataset is None and cfg.train.devices == 2
    assert cfg.method.class_weights == "inverse" and cfg.optim.weight_decay == 0.0 and cfg.seed == 7
    assert parse_override("data.root=/a=b") == (["data", "root"], "/a=b")
    assert cfg.recipe == "r"


def test_unknown_key_names_file_key_and_valid_keys(tmp_path):
    path = write(tmp_path, "bad.yaml", {**MINIMAL, "train": {"max_step": 5}})
    with pytest.raises(UserError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "'train.max_step'" in msg and "max_steps" in msg and "val_every" in msg
    path = write(tmp_path, "bad2.yaml", {**MINIMAL, "trainer": {}})
    with pytest.raises(UserError, match=r"unknown key 'trainer'; valid keys at the top level: base, data, "):
        load_config(path)


def test_mistyped_values_are_refused(tmp_path):
    cases = {
        "train.max_steps=abc": "'train.max_steps' expected an integer, got 'abc'",
        "train.max_steps=2.5": "'train.max_steps' expected an integer",
        "optim.lr=fast": "'optim.lr' expected a number",
        "train.progress=3": "'train.progress' expected true/false",
        "data.source.crop=[1, x]": "'data.source.crop[1]' expected an integer",
        "optim.name=adam": "'optim.name' must be one of sgd, adamw",
        "data.source.crop=[1, 2, 3]": "'data.source.crop' must be a pair",
        "data.batch_size=0": "'data.batch_size' must be positive",
        "train.devices=many": "'train.devices' must be a number or 'auto'",
        "data.source=cityscapes": "'data.source' must be a mapping",
    }
    path = write(tmp_path, "r.yaml", MINIMAL)
    for override, expected in cases.items():
        with pytest.raises(UserError) as err:
            load_config(path, [override])
        assert str(path) in str(err.value) and expected in str(err.value), (override, str(err.value))


def test_override_errors_name_the_override(tmp_path):
    path = write(tmp_path, "r.yaml", MINIMAL)
    with pytest.raises(UserError, match=r"override 'train.max_step=3': unknown key 'train.max_step'"):
        load_config(path, ["train.max_step=3"])
    with pytest.raises(UserError, match=r"override 'nosuch.key=3': unknown key 'nosuch'"):
        load_config(path, ["nosuch.key=3"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_config(path, ["train.max_steps"])


def test_method_section_is_validated_by_the_method(tmp_path):
    path = write(tmp_path, "r.yaml", {**MINIMAL, "method": {"name": "supervised", "gamma": 2}})
    with pytest.raises(UserError, match=r"unknown key 'method.gamma'; valid keys under 'method': class_weights, init_checkpoint, name, target_weight"):
        load_config(path)
    path = write(tmp_path, "r2.yaml", {**MINIMAL, "method": {"name": "nosuchmethod"}})
    with pytest.raises(UserError, match=r"unknown method 'nosuchmethod'; available: .*supervised"):
        load_config(path)
    path = write(tmp_path, "r3.yaml", {"data": MINIMAL["data"]})
    with pytest.raises(UserError, match="missing 'method"):
        load_config(path)


def test_base_inheritance_merges_sections(tmp_path):
    write(tmp_path, "base.yaml", {**MINIMAL, "recipe": "base", "train": {"max_steps": 10, "val_every": 5},
                                  "data": {"root": "/d", "source": {"dataset": "cityscapes", "crop": [8, 8]}}})
    (tmp_path / "sub").mkdir()
    child = write(tmp_path / "sub", "child.yaml", {"base": "../base.yaml", "train": {"max_steps": 20},
                                                  "data": {"source": {"flip": False}}})
    cfg = load_config(child)
    assert cfg.train.max_steps == 20 and cfg.train.val_every == 5  # merged key by key
    assert cfg.data.root == "/d" and cfg.data.source.crop == [8, 8] and cfg.data.source.flip is False
    assert cfg.recipe == "child"  # named after its own file, not the base's recipe
    write(tmp_path, "a.yaml", {"base": "b.yaml"})
    write(tmp_path, "b.yaml", {"base": "a.yaml"})
    with pytest.raises(UserError, match="circular 'base' chain"):
        load_config(tmp_path / "a.yaml")
    missing = write(tmp_path, "m.yaml", {"base": "nothere.yaml"})
    with pytest.raises(UserError, match=r"nothere.yaml: config file not found \(base of .*m.yaml\)"):
        load_config(missing)


def test_bad_yaml_and_missing_file(tmp_path):
    path = write(tmp_path, "broken.yaml", "method: {name: supervised\n  data: [")
    with pytest.raises(UserError, match=r"broken.yaml: invalid YAML"):
        load_config(path)
    with pytest.raises(UserError, match=r"nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_config(path)


def test_dump_round_trip_and_diff(tmp_path):
    cfg = load_config(REPO / "configs" / "supervised_joint.yaml", ["train.max_steps=7"])
    again = load_config(write(tmp_path, "dumped.yaml", dump_config(cfg)))
    assert config_diff(cfg, again) == []  # the dump is complete: reloading it gives the same config
    other = load_config(REPO / "configs" / "supervised_joint.yaml", ["optim.lr=0.1", "data.workers=0"])
    assert config_diff(cfg, other) == ["data.workers", "optim.lr", "train.max_steps"]
