"""Export of the inference forward (unimmad.export, ``unimmad export``): the fixed-modality
forward against ``UniMMAD.forward``, ``torch.export`` programs at several batch sizes, and
the ONNX model run by onnxruntime against the PyTorch model (map, score, routing)."""
import contextlib
import io
import os

import pytest
import torch

from helpers import assert_rel
from unimmad import UniMMAD, UniMMADConfig, accelerate
from unimmad.cli import main
from unimmad.engine.checkpoint import save_weights
from unimmad.export import ExportableUniMMAD, export_program, save_torch

# ONNX export needs the [onnx] extra (in the [test] extra and requirements-test.txt).
ONNX_MISSING = "onnx / onnxscript / onnxruntime not installed: pip install -e \".[onnx]\""


def _tiny(**overrides) -> UniMMAD:
    """The tiny preset with routers that route by content: at random init the condition
    vectors of all units nearly coincide and every unit picks the same leaders, which
    would make a routing comparison prove little.  Each router is re-scaled around the
    mean of its inputs on a calibration batch (as a trained router would spread them)."""
    model = UniMMAD(UniMMADConfig.tiny(**overrides)).eval()
    seen = {}
    hooks = [b.router.register_forward_hook(lambda mod, inp, out: seen.__setitem__(mod, inp[0]))
             for c in model.cmoe for b in c.branches]
    with torch.no_grad():
        model(torch.randn(4, 4, 3, 64, 64), torch.full((4,), 2))
        for router, g in seen.items():
            router.weight.mul_(30 / (g.std(0).mean() * g.shape[1] ** 0.5))
            router.bias.copy_(-(g.mean(0) @ router.weight.T))
    for h in hooks:
        h.remove()
    return model


def _reference(model, images):
    """``UniMMAD.forward`` with M = images.shape[1] modalities for every sample (the
    absent slots hold random values: the model must ignore them)."""
    B, M = images.shape[:2]
    Mx = model.config.max_modalities
    padded = torch.cat([images, torch.randn(B, Mx - M, *images.shape[2:])], 1)
    with torch.no_grad():
        out = model(padded, torch.full((B,), M))
    return out.anomaly_map, out.pred_score, [i for a in out.aux for i in a.indices]


def _assert_map_close(out, ref, tol, name):
    """Relative error of the map and of its variation around the mean (a near-constant
    map would hide errors in a plain relative error)."""
    assert_rel(out, ref, tol, name)
    assert_rel(out - ref.mean(), ref - ref.mean(), tol, name + " (centred)")


def _routing_varies(indices):
    """True when some level/branch routes two units differently (else comparing routing
    would prove little)."""
    return any(not bool((idx == idx[:1]).all()) for idx in indices)


@pytest.mark.parametrize("M, map_mode", [
    (1, "mean"),   # one modality: units = samples
    (3, "mean"),   # padded slots
    (4, "joint"),  # every slot used, the release's map
])
def test_fixed_modality_forward_is_the_model_forward(M, map_mode):
    model = _tiny(map_mode=map_mode)
    wrapper = ExportableUniMMAD(model, M, routing=True).eval()
    images = torch.randn(3, M, 3, 64, 64)
    with torch.no_grad():
        amap, score, *routing = wrapper(images)
    ref_map, ref_score, ref_routing = _reference(model, images)
    _assert_map_close(amap, ref_map, 1e-5, "anomaly_map")
    assert_rel(score, ref_score, 1e-5, "pred_score")
    assert len(routing) == 9 and len(wrapper.output_names) == 11
    assert _routing_varies(ref_routing)
    for got, want in zip(routing, ref_routing):
        assert got.shape == (3 * M, 2) and torch.equal(got, want)


def test_exportable_rejects_bad_arguments():
    model = _tiny()
    for m in (0, 5, True, 2.0):
        with pytest.raises(ValueError, match="num_modalities"):
            ExportableUniMMAD(model, m)
    wrapper = ExportableUniMMAD(model, 2)
    with pytest.raises(ValueError, match=r"\[B, 2, 3, 64, 64\]"):
        wrapper(torch.randn(1, 3, 3, 64, 64))  # three modalities into a 2-modality export
    with pytest.raises(ValueError, match=r"\[B, 2, 3, 64, 64\]"):
        wrapper(torch.randn(1, 2, 3, 32, 32))
    with pytest.raises(TypeError, match="float64"):
        wrapper(torch.randn(1, 2, 3, 64, 64, dtype=torch.float64))
    model.train()
    with pytest.raises(ValueError, match=r"\.eval\(\)"):
        wrapper(torch.randn(1, 2, 3, 64, 64))
    model.eval()
    with pytest.raises(TypeError, match="UniMMAD"):
        ExportableUniMMAD(torch.nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="reference model"):
        ExportableUniMMAD(accelerate(_tiny(), backend="torch"), 1)
    with pytest.raises(ValueError, match="batch_size"):
        export_program(model, 1, dynamic_batch=True, batch_size=1)


def test_torch_export_program_any_batch_size(tmp_path):
    model = _tiny()
    model.train()  # export puts it in eval mode and restores the mode afterwards
    path = save_torch(model, str(tmp_path / "m.pt2"), 2, routing=True)
    assert model.training
    model.eval()
    program = torch.export.load(path)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("unimmad" in t for t in targets)  # plain aten ops, no custom kernels
    module = program.module()
    for B in (1, 3):  # traced at batch 2: the batch is symbolic
        images = torch.randn(B, 2, 3, 64, 64)
        with torch.no_grad():
            amap, score, *routing = module(images)
        ref_map, ref_score, ref_routing = _reference(model, images)
        _assert_map_close(amap, ref_map, 1e-5, f"anomaly_map B={B}")
        assert_rel(score, ref_score, 1e-5, f"pred_score B={B}")
        assert all(torch.equal(g, w) for g, w in zip(routing, ref_routing))


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    """An ONNX model written by ``unimmad export --checkpoint`` (batch 2, 2 modalities,
    routing outputs) and the PyTorch model whose weights the checkpoint holds."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason=ONNX_MISSING)
    tmp = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(123)
    model = _tiny()
    with torch.no_grad():  # non-trivial normalisation statistics
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    ckpt = str(tmp / "weights")
    save_weights(model, ckpt)
    out = str(tmp / "model.onnx")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["export", "--format", "onnx", "--checkpoint", ckpt, "--modalities", "2",
                     "--batch-size", "2", "--routing", "--out", out]) == 0
    return model, out, err.getvalue()


def test_onnx_matches_pytorch_with_onnxruntime(onnx_export):
    import onnxruntime
    model, path, _ = onnx_export
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape == [2, 2, 3, 64, 64]
    names = [o.name for o in session.get_outputs()]
    assert names == ExportableUniMMAD(model, 2, routing=True).output_names
    for trial in range(2):
        images = torch.randn(2, 2, 3, 64, 64)
        outs = [torch.from_numpy(o) for o in session.run(None, {"images": images.numpy()})]
        ref_map, ref_score, ref_routing = _reference(model, images)
        assert outs[0].dtype == torch.float32 and outs[0].shape == (2, 64, 64)
        _assert_map_close(outs[0], ref_map, 1e-4, "onnx anomaly_map")
        assert_rel(outs[1], ref_score, 1e-4, "onnx pred_score")
        assert _routing_varies(ref_routing)
        for name, got, want in zip(names[2:], outs[2:], ref_routing):
            assert torch.equal(got, want), f"{name}: ONNX routes differently"


def test_cli_onnx_export_reports_its_check(onnx_export):
    _, path, err = onnx_export
    assert "weights -> " in err and "[2, 2, 3, 64, 64] float32" in err and "routing_*" in err
    check = err.split("check against the PyTorch model (batch 2): ")[1]
    assert check.startswith("map rel. err ") and "routing identical" in check
    assert float(check.split()[3].rstrip(",")) <= 1e-4
    assert not os.path.exists(path + ".data")  # small weights stay in the one file


def test_cli_export_torch_and_errors(tmp_path, capsys):
    out = str(tmp_path / "m.pt2")
    assert main(["export", "--format", "torch", "--set", "preset=tiny", "--modalities", "1",
                 "--seed", "3", "--out", out]) == 0
    err = capsys.readouterr().err
    assert "[B, 1, 3, 64, 64] (any B)" in err and "check against the PyTorch model (batch 3)" in err
    torch.manual_seed(3)
    model = UniMMAD(UniMMADConfig.tiny()).eval()  # what --seed 3 built
    images = torch.randn(2, 1, 3, 64, 64)
    with torch.no_grad():
        amap, score = torch.export.load(out).module()(images)
    ref_map, ref_score, _ = _reference(model, images)
    _assert_map_close(amap, ref_map, 1e-5, "anomaly_map")
    assert main(["export", "--format", "torch", "--set", "preset=tiny", "--modalities", "5",
                 "--out", out, "--no-check"]) == 2
    assert "num_modalities must be an int in [1, 4]" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--set", "preset=tiny",
                 "--modalities", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--modalities", "1"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_export_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--format" in text and "fixed batch size" in text and "--routing" in text


def test_onnx_export_without_the_extra_says_how_to_install(tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    assert main(["export", "--set", "preset=tiny", "--modalities", "1",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert 'pip install -e ".[onnx]"' in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_fails_when_the_check_disagrees(tmp_path, monkeypatch, capsys):
    import unimmad.cli as cli  # the names the CLI calls (imported at the top of cli.py)
    monkeypatch.setattr(cli, "save_torch", lambda *a, **k: None)  # no export: CLI logic only
    monkeypatch.setattr(cli, "verify_export", lambda *a, **k: {
        "map_rel_err": 3e-2, "score_rel_err": 1e-7, "routing_equal": False, "ok": False,
        "tol": 1e-4, "batch_size": 3})
    assert main(["export", "--format", "torch", "--set", "preset=tiny", "--modalities", "1",
                 "--out", str(tmp_path / "m.pt2")]) == 1
    err = capsys.readouterr().err
    assert "map rel. err 3.00e-02" in err and "routing DIFFERENT" in err
    assert "disagrees with the PyTorch model (tolerance 1e-04)" in err


@pytest.mark.parametrize("batch_size, ok", [(1, True), (3, True), (0, False), (-1, False),
                                            (True, False), (1.0, False)])
def test_onnx_batch_size_check_admits_every_positive_int(monkeypatch, tmp_path, batch_size, ok):
    """The fixed ONNX batch size is any positive int (the CLI default is 1); the check runs
    before anything is traced (the tracing step is replaced by a marker here)."""
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name, reason=ONNX_MISSING)
    import unimmad.export as ex

    class Reached(Exception):
        pass

    def stop(*a, **k):
        raise Reached

    monkeypatch.setattr(ex, "ExportableUniMMAD", stop)
    model = UniMMAD(UniMMADConfig.tiny())
    with pytest.raises(Reached if ok else ValueError):
        ex.export_onnx(model, str(tmp_path / "m.onnx"), 2, batch_size=batch_size)
