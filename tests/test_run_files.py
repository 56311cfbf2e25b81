"""Run files and ``--set`` overrides: every section refuses unknown keys and wrong types
with a message naming the key (and the file), syntax errors name the file, line and
column, and the CLI turns each into one line on stderr with exit status 2.  The expected
messages are written out here, not derived from the checker."""
import json
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from unimmad.checks import check_type, describe_type
from unimmad.cli import main
from unimmad.engine.runconfig import (EvalConfig, apply_overrides, check_run_config,
                                      load_run_config, parse_yaml, run_file_beside)

ENTRY = {"name": "mvtec", "root": "/data/mvtec"}


# ----------------------------------------------------------------------------- type words
@pytest.mark.parametrize("hint, words", [
    (bool, "true or false"), (int, "an int"), (float, "a number"), (str, "a string"),
    (type(None), "null"), (Any, "any value"),
    (Optional[int], "an int or null"), (typing.Union[int, str], "an int or a string"),
    (typing.Union[int, float, None], "an int or a number or null"),
    (Tuple[float, ...], "a list of numbers"), (Tuple[int, int], "a list of 2 ints"),
    (Tuple[int, str], "a list of 2 values (an int, a string)"),
    (List[str], "a list of strings"), (Sequence[bool], "a list of true/false values"),
    (list, "list"), (List, "a list"),
    (Dict[str, float], "a mapping of strings to numbers"), (Dict, "a mapping"),
    (Path, "a path (string)"), (Tuple[Optional[int], ...], "a list of an int or null"),
])
def test_type_hints_in_plain_words(hint, words):
    assert describe_type(hint) == words


@pytest.mark.parametrize("hint, good, bad", [
    (int, [0, -3, 2 ** 40], [True, 1.0, "1", None]),
    (float, [0, 1.5, -2], [True, float("nan"), float("inf"), "1.0"]),
    (bool, [True, False], [0, 1, "true"]),
    (str, ["", "x"], [1, None, ["x"]]),
    (Optional[int], [None, 3], [2.5, False]),
    (Tuple[int, int], [[1, 2], (3, 4)], [[1], [1, 2, 3], "12", [1, 2.0]]),
    (Tuple[float, ...], [[], [1, 2.5]], [[1, "a"], 1.0]),
    (List[str], [[], ["a"]], [["a", 1], "a"]),
    (Dict[str, float], [{}, {"a": 1.0}], [{"a": "x"}, {1: 1.0}, [("a", 1.0)]]),
    (Dict, [{}, {1: "x"}], [[]]),
    (Path, ["a/b", Path("c")], [1, None]),
    (typing.Callable, [print, 3], []),            # unknown to the checker: the receiver checks
])
def test_values_that_fit_a_hint(hint, good, bad):
    for v in good:
        assert check_type("x", v, hint) is v
    for v in bad:
        with pytest.raises(TypeError, match=r"^where\.k: expected .*, got "):
            check_type("where.k", v, hint)


def test_a_wrong_type_message_names_key_expectation_and_value():
    with pytest.raises(TypeError) as e:
        check_type("train.lr", "abc", float)
    assert str(e.value) == "train.lr: expected a number, got str 'abc'"


# ----------------------------------------------------------------------------- sections
@pytest.mark.parametrize("run, match", [
    ({"trainer": {}}, r"unknown section\(s\) \['trainer'\]"),
    ({"model": {"topk": 2}}, r"model: unknown UniMMADConfig field\(s\) \['topk'\]"),
    ({"train": {"epoch": 2}}, r"train: unknown TrainConfig field\(s\) \['epoch'\]"),
    ({"eval": {"batchsize": 2}}, r"eval: unknown EvalConfig field\(s\) \['batchsize'\]"),
    ({"data": {"tests": []}}, r"data: unknown key\(s\) \['tests'\]"),
    ({"data": {"replay": {"earlier": [], "share": 0.1}}},
     r"data.replay: unknown key\(s\) \['share'\]; known: earlier, fraction"),
    ({"data": {"preprocess": {"depthfill": "mean"}}},
     r"data.preprocess: unknown Preprocess field\(s\) \['depthfill'\]"),
    ({"data": {"train": [dict(ENTRY, clases=["a"])]}},
     r"data.train.0: unknown option\(s\) \['clases'\] for the 'mvtec' reader"),
    ({"data": {"test": [{"name": "mvtec"}]}}, r"data.test.0: a dataset entry needs 'name' and 'root'"),
    ({"data": {"train": [{"name": "nope", "root": "/x"}]}}, r"data.train.0.name: unknown dataset 'nope'"),
    ({"preset": "huge"}, r"preset must be 'paper' or 'tiny', got 'huge'"),
])
def test_unknown_keys_are_refused_in_every_section(run, match):
    with pytest.raises(ValueError, match=match):
        check_run_config(run)


@pytest.mark.parametrize("run, match", [
    ({"train": {"epochs": True}}, r"train.epochs: expected an int, got bool True"),
    ({"train": {"epochs": 2.5}}, r"train.epochs: expected an int, got float 2.5"),
    ({"train": {"lr": "abc"}}, r"train.lr: expected a number, got str 'abc'"),
    ({"train": {"lr": float("nan")}}, r"train.lr: expected a number, got float nan"),
    ({"train": {"betas": "0.9"}}, r"train.betas: expected a list of 2 numbers, got str"),
    ({"model": {"top_k": False}}, r"model.top_k: expected an int, got bool False"),
    ({"model": {"cmoe_kernel_sizes": 3}}, r"model.cmoe_kernel_sizes: expected a list of ints"),
    ({"eval": {"overlays": "2"}}, r"eval.overlays: expected an int, got str '2'"),
    ({"eval": {"pixel_bins": 1.5}}, r"eval.pixel_bins: expected an int or null"),
    ({"eval": {"store_thresholds": 1}}, r"eval.store_thresholds: expected true or false"),
    ({"model": []}, r"model: expected a mapping of fields, got list"),
    ({"eval": 3}, r"eval: expected a mapping of fields, got int 3"),
    ({"data": {"train": ENTRY}}, r"data.train: expected a list of dataset entries, got dict"),
    ({"data": {"train": ["mvtec"]}}, r"data.train.0: a dataset entry must be a mapping"),
    ({"data": {"train": [dict(ENTRY, classes="bottle")]}},
     r"data.train.0.classes: expected .*list.*, got str 'bottle'"),
    ({"data": {"train": [dict(ENTRY, root=3)]}}, r"data.train.0.root: expected a string, got int 3"),
    ({"data": {"loss_weights": {"mvtec": "x"}}},
     r"data.loss_weights: expected a mapping of strings to numbers"),
    ({"data": {"preprocess": {"depth_scale": True}}},
     r"data.preprocess.depth_scale: expected a number, got bool True"),
    ({"data": {"preprocess": ["mean"]}}, r"data.preprocess: expected a mapping"),
    ({"preset": 1}, r"preset: expected a string, got int 1"),
])
def test_wrong_types_are_refused_with_the_key_named(run, match):
    with pytest.raises(TypeError, match=match):
        check_run_config(run)


@pytest.mark.parametrize("run, match", [
    ({"data": {"loss_weights": {"mvtec": 0.0}}}, r"data.loss_weights.mvtec"),
    ({"data": {"loss_weights": {"mvtec": -1.0}}}, r"data.loss_weights.mvtec"),
    ({"data": {"replay": {"earlier": [ENTRY], "fraction": 0.0}}}, r"data.replay.fraction"),
    ({"data": {"replay": {"earlier": [ENTRY], "fraction": 1.5}}}, r"data.replay.fraction"),
    ({"eval": {"batch_size": 0}}, r"eval.batch_size must be >= 1, got 0"),
    ({"eval": {"aupro": "roc"}}, r"eval.aupro must be one of"),
    ({"eval": {"pixel_bins": 1}}, r"eval.pixel_bins must be >= 2 or null, got 1"),
    ({"eval": {"overlays": -1}}, r"eval.overlays must be >= 0, got -1"),
    ({"eval": {"num_workers": -2}}, r"eval.num_workers must be >= 0, got -2"),
])
def test_out_of_range_values_are_refused(run, match):
    with pytest.raises(ValueError, match=match):
        check_run_config(run)


def test_values_at_the_edges_of_their_ranges_pass():
    run = {"data": {"loss_weights": {"mvtec": 1e-9},
                    "replay": {"earlier": [ENTRY], "fraction": 1.0},
                    "preprocess": {"depth_fill": "mean", "depth_norm": "center"}},
           "eval": {"batch_size": 1, "pixel_bins": 2, "overlays": 0, "num_workers": 0}}
    assert check_run_config(run) is run
    run["eval"]["pixel_bins"] = None                   # exact metrics
    assert check_run_config(run) is run
    assert EvalConfig.from_dict({"pixel_bins": 2}).pixel_bins == 2


def test_messages_name_the_file_and_the_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("train: {epochs: 3}\n")
    with pytest.raises(TypeError, match=rf"^{p} with --set overrides: train.lr: expected a number"):
        load_run_config(str(p), ["train.lr=abc"])
    with pytest.raises(TypeError, match=r"^--set: train.epochs: expected an int, got bool True"):
        load_run_config(None, ["train.epochs=true"])
    p.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=rf"^{p}: a run config must be a mapping of sections"):
        load_run_config(str(p))
    p.write_text("")
    assert load_run_config(str(p)) == {}
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_run_config(str(tmp_path / "none.yaml"))


# ----------------------------------------------------------------------------- syntax
def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("train:\n  epochs: 3\n  lr: [1e-3\n")
    with pytest.raises(ValueError) as e:
        load_run_config(str(p))
    msg = str(e.value)
    assert msg.startswith(f"{p}: invalid YAML at line 4, column 1: ") and "\n" not in msg
    assert "unicode string" not in msg


def test_yaml_error_without_a_position_is_its_first_line():
    # a reader error (a control character) carries no mark and no "problem": the message
    # is its first line, without PyYAML's "in <unicode string>" second line
    with pytest.raises(ValueError) as e:
        parse_yaml("a: \x01\n", "f.yaml")
    assert str(e.value) == ("f.yaml: invalid YAML: unacceptable character #x0001: special "
                            "characters are not allowed")


def test_yaml_duplicate_key_and_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"^f.yaml: invalid YAML at line 2, column 1: found "
                                         r"the key 'epochs' twice"):
        parse_yaml("epochs: 1\nepochs: 2\n", "f.yaml")
    got = parse_yaml("a: 1e-3\nb: 2E+2\nc: 1.5\nd: '1e-3'\ne: 3\n", "f.yaml")
    assert got == {"a": 1e-3, "b": 200.0, "c": 1.5, "d": "1e-3", "e": 3}
    assert isinstance(got["a"], float) and isinstance(got["e"], int)


def test_json_syntax_and_duplicate_keys(tmp_path):
    p = tmp_path / "run.json"
    p.write_text('{"train": {"epochs": 3,}}')
    with pytest.raises(ValueError, match=rf"^{p}: invalid JSON at line 1, column 24: "):
        load_run_config(str(p))
    p.write_text('{"train": {"epochs": 3, "epochs": 4}}')
    with pytest.raises(ValueError, match=r"the key 'epochs' appears twice"):
        load_run_config(str(p))
    p.write_text(json.dumps({"train": {"epochs": 4}}))
    assert load_run_config(str(p))["train"] == {"epochs": 4}


def test_set_values_are_yaml_and_text_stays_text():
    run = apply_overrides({}, ["train.lr=1e-4", "train.betas=[0.5, 0.9]", "eval.out_dir=null",
                               "train.bf16=true", "model.top_k=1", "eval.aupro=exact",
                               "eval.out_dir=[unclosed"])
    assert run["train"] == {"lr": 1e-4, "betas": [0.5, 0.9], "bf16": True}
    assert run["model"] == {"top_k": 1}
    assert run["eval"] == {"out_dir": "[unclosed", "aupro": "exact"}   # not YAML: text
    with pytest.raises(ValueError, match=r"train.epochs is int 3, not a section or a list"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])
    with pytest.raises(ValueError, match=r"the first key must be one of"):
        apply_overrides({}, ["=1"])


# ----------------------------------------------------------------------------- beside
def test_the_run_file_beside_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "last").mkdir()
    assert run_file_beside(str(run / "weights")) is None
    (run / "run_config.json").write_text("{}")
    for where in (run / "weights", run / "last", run / "weights" / "model.safetensors"):
        assert run_file_beside(str(where)) == str(run / "run_config.json")
    (run / "weights" / "run_config.json").write_text("{}")
    assert run_file_beside(str(run / "weights")) == str(run / "weights" / "run_config.json")


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("text, expect", [
    ("train: {epochs: true}\n", "train.epochs: expected an int, got bool True"),
    ("eval: {overlay: 2}\n", "eval: unknown EvalConfig field(s) ['overlay']"),
    ("train:\n  lr: [1\n", "invalid YAML at line 3, column 1"),
])
def test_cli_reports_a_bad_run_file_in_one_line_with_status_2(tmp_path, capsys, text, expect):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    assert main(["train", "--config", str(p), "--set", f"train.out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and expect in err[0], err
    assert not (tmp_path / "out").exists()


def test_presets_give_their_configs():
    from unimmad import UniMMADConfig
    from unimmad.engine.runconfig import build_model_config
    assert build_model_config({"preset": "tiny"}) == UniMMADConfig.tiny()
    assert build_model_config({}) == build_model_config({"preset": "paper"}) == UniMMADConfig()
    assert build_model_config({"preset": "tiny", "model": {"top_k": 1}}).top_k == 1
    assert UniMMADConfig.tiny().image_size < UniMMADConfig().image_size
